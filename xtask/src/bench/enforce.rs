//! `cargo xtask bench enforce`: how soon after a grant's end its processes are dead, and
//! what the kernel's deny check costs every syscall on the host.
//!
//! Latency: `trials` unit-named cgroups, each running a `sleep` under its own grant with
//! `on_expiry: kill`, the expiries 150 ms apart so the kills do not overlap; each is timed
//! from its grant's `expires_at` to the moment its process is gone. Then again with the
//! agent killed once the grants are in place: what the pinned program and the reaper do
//! alone.
//!
//! Cost: a loop of `getppid` syscalls, timed with no agent, with the agent running and its
//! deny maps empty (the enforcement program not attached: what the capture sensors' syscall
//! tracepoints cost a syscall none of them records), and with them populated (after the
//! latency run: the check looks the caller's session and cgroup up). Runs alternate so
//! drift in this shared machine's speed lands on every side. Beside it, with no agent and
//! with one, a loop of `ioctl(TCGETS)` on a terminal: what the terminal sensor's `ioctl`
//! program (which records only `TIOCSWINSZ`) costs every other ioctl. Each loop runs in a
//! fresh process, as any other program on the host would: timed inside this one, it shared
//! the process with the threads that read the agent's and the collector's output.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use tests::{
    TestCgroup,
    agent::{Agent, Sink},
    collector::{Collector, scratch_dir},
    marker, operator,
};

use super::{percentile_line, require_root, spread, use_release_binaries};

const SYSCALLS: u32 = 2_000_000;
const RUNS: usize = 5;
/// Time between two grants' expiries.
const SPACING: Duration = Duration::from_millis(150);

pub fn run(trials: usize) -> anyhow::Result<()> {
    require_root("the enforce benchmark loads kernel programs")?;
    use_release_binaries();
    let dir = scratch_dir("bench-enforce");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let spool = dir.join("spool");
    let start_agent = || -> anyhow::Result<Agent> {
        let agent = Agent::shipping_with(Sink::Collect, &spool, &url, &[]);
        anyhow::ensure!(
            agent.wait_for_status(Duration::from_secs(20), "grant view adopted"),
            "the agent never got a grant view"
        );
        Ok(agent)
    };
    let (mut detached, mut empty, mut populated) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ioctl_detached, mut ioctl_attached) = (Vec::new(), Vec::new());
    // Empty maps before and after the populated phase, and no agent around both: drift in
    // this machine's speed lands on every side.
    detached.extend(runs(Call::Getppid)?);
    ioctl_detached.extend(runs(Call::Tcgets)?);
    let agent = start_agent()?;
    empty.extend(runs(Call::Getppid)?);
    ioctl_attached.extend(runs(Call::Tcgets)?);
    let latencies = expiry_to_death(&agent, &url, trials)?;
    populated.extend(runs(Call::Getppid)?);
    stop(agent)?;
    detached.extend(runs(Call::Getppid)?);
    ioctl_detached.extend(runs(Call::Tcgets)?);
    let agent = start_agent()?;
    empty.extend(runs(Call::Getppid)?);
    ioctl_attached.extend(runs(Call::Tcgets)?);
    stop(agent)?;
    // The agent killed once every grant is in place: the pinned program and the reaper
    // alone.
    let agent = start_agent()?;
    let running = set_up(&agent, &url, trials)?;
    drop(agent.kill_leaving_enforcement());
    let orphaned = measure(running)?;
    stop(start_agent()?)?;
    drop(collector);

    println!(
        "grant expiry to death of its process, {trials} grants: {}",
        percentile_line(latencies)
    );
    println!(
        "grant expiry to death of its process with the agent killed (kill -9) before it, \
         {trials} grants: {}",
        percentile_line(orphaned)
    );
    let per_call = |d: Duration| d.as_secs_f64() * 1e9 / f64::from(SYSCALLS);
    let mut medians = [0.0; 5];
    for (median, (phase, runs)) in medians.iter_mut().zip([
        ("getppid, no agent", detached),
        ("getppid, agent, deny maps empty", empty),
        ("getppid, agent, deny maps populated", populated),
        ("ioctl(TCGETS), no agent", ioctl_detached),
        ("ioctl(TCGETS), agent", ioctl_attached),
    ]) {
        let count = runs.len();
        let [min, mid, max] = spread(runs).map(per_call);
        *median = mid;
        println!("{phase}: {count} runs, min {min:.1}, max {max:.1} ns/call");
    }
    let [base, empty, populated, ioctl_base, ioctl_agent] = medians;
    println!(
        "getppid, {SYSCALLS} calls, medians: no agent {base:.1} ns/call; \
         agent, deny maps empty {empty:.1} ns/call (+{:.1}); \
         agent, deny maps populated {populated:.1} ns/call (+{:.1}); \
         the populated check costs {:+.1} ns per syscall ({:.2}× the agent's cost with the maps empty)",
        empty - base,
        populated - base,
        populated - empty,
        (populated - base) / (empty - base).max(f64::MIN_POSITIVE),
    );
    println!(
        "ioctl(TCGETS) on a terminal, {SYSCALLS} calls, medians: no agent {ioctl_base:.1} \
         ns/call; agent {ioctl_agent:.1} ns/call (+{:.1}, of which the terminal sensor's ioctl \
         program, which records only window sizes, is what getppid's +{:.1} does not \
         account for: {:+.1})",
        ioctl_agent - ioctl_base,
        empty - base,
        (ioctl_agent - ioctl_base) - (empty - base),
    );
    Ok(())
}

/// The last lines of a log, for an error.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn stop(agent: Agent) -> anyhow::Result<()> {
    let stopped = agent.stop();
    anyhow::ensure!(stopped.success, "agent failed:\n{}", stopped.stderr);
    Ok(())
}

/// A syscall the cost loop times.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Call {
    /// `getppid`: a syscall no sensor records.
    Getppid,
    /// `ioctl(TCGETS)` on a terminal: an ioctl the terminal sensor looks at and passes.
    Tcgets,
}

/// `RUNS` timings of `call`, each in a fresh process.
fn runs(call: Call) -> anyhow::Result<Vec<Duration>> {
    (0..RUNS).map(|_| timed(call)).collect()
}

/// Times `SYSCALLS` calls of `call` in a child process (`cargo xtask syscall-loop`).
fn timed(call: Call) -> anyhow::Result<Duration> {
    let value = clap::ValueEnum::to_possible_value(&call).context("a syscall-loop name")?;
    let name = value.get_name();
    let out = Command::new(std::env::current_exe()?)
        .args(["syscall-loop", name])
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "syscall-loop {name}: {}", out.status);
    let nanos: u64 = String::from_utf8(out.stdout)?
        .trim()
        .parse()
        .context("syscall-loop's output")?;
    Ok(Duration::from_nanos(nanos))
}

/// The child's side of [`timed`]: prints the loop's nanoseconds.
pub fn syscall_loop(call: Call) {
    /// `SYSCALLS` calls, timed; generic so each call is inlined into its loop.
    fn times(mut syscall: impl FnMut() -> i32) -> Duration {
        let start = Instant::now();
        for _ in 0..SYSCALLS {
            std::hint::black_box(syscall());
        }
        start.elapsed()
    }
    let elapsed = match call {
        // SAFETY: no arguments, no side effects.
        Call::Getppid => times(|| unsafe { libc::getppid() }),
        Call::Tcgets => {
            use std::os::fd::AsRawFd as _;
            let terminal = tests::pty::Pty::open();
            let fd = terminal.master.as_raw_fd();
            // SAFETY: a termios the kernel fills.
            let mut termios: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: a valid terminal fd and termios.
            times(|| unsafe { libc::ioctl(fd, libc::TCGETS, &raw mut termios) })
        }
    };
    println!("{}", elapsed.as_nanos());
}

/// One process under a grant that will end; killed if the benchmark fails first.
struct Trial {
    child: Child,
    /// Removed when dropped, after the child is gone (fields drop after `Drop::drop`).
    _cgroup: TestCgroup,
    expires: SystemTime,
}

impl Drop for Trial {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn expiry_to_death(agent: &Agent, url: &str, trials: usize) -> anyhow::Result<Vec<Duration>> {
    measure(set_up(agent, url, trials)?)
}

/// `trials` sleeps in their own cgroups, each under a grant that will end.
fn set_up(agent: &Agent, url: &str, trials: usize) -> anyhow::Result<Vec<Trial>> {
    // Far enough ahead to set every trial up before the first expiry.
    let first = Duration::from_secs(3) + Duration::from_millis(250) * u32::try_from(trials)?;
    let mut running = Vec::with_capacity(trials);
    for i in 0..trials {
        let unit = format!("{}.service", marker("bench-unit"));
        let ttl = first + SPACING * u32::try_from(i)?;
        let out = operator::run(
            url,
            &[
                "grant",
                "create",
                "--unit",
                &unit,
                "--ttl",
                &format!("{}ms", ttl.as_millis()),
                "--on-expiry",
                "kill",
                "--reason",
                "bench",
                "--json",
            ],
        );
        anyhow::ensure!(
            out.status.success(),
            "grant create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let grant: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let id = grant["id"].as_str().context("grant id")?.to_owned();
        let expires = UNIX_EPOCH
            + Duration::from_nanos(grant["expires_at_unix_nano"].as_u64().context("expiry")?);
        // The log names every grant of a view; the status line only the first few.
        let adopted = Instant::now() + Duration::from_secs(10);
        while !agent.log().contains(&format!("\"{id}\"")) && Instant::now() < adopted {
            std::thread::sleep(Duration::from_millis(5));
        }
        anyhow::ensure!(
            agent.log().contains(&format!("\"{id}\"")),
            "the agent never got grant {id}; its log ends:\n{}",
            tail(&agent.log())
        );
        let cgroup = TestCgroup::create(&unit);
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cgroup.enter(&mut cmd);
        let trial = Trial {
            child: cmd.spawn()?,
            _cgroup: cgroup,
            expires,
        };
        let pid = trial.child.id();
        running.push(trial);
        agent
            .wait_for(Duration::from_secs(10), |v| {
                v["kind"] == "exec" && v["pid"] == pid && v["identity"]["grant"] == id
            })
            .with_context(|| {
                format!(
                    "the sleep of {unit} was not seen under {id}; the agent's log ends:\n{}",
                    tail(&agent.log())
                )
            })?;
    }
    Ok(running)
}

/// How long after its grant's end each trial's process died.
fn measure(running: Vec<Trial>) -> anyhow::Result<Vec<Duration>> {
    anyhow::ensure!(
        SystemTime::now() < running[0].expires,
        "setting up took past the first expiry: raise its lead"
    );
    let trials = running.len();
    let mut latencies = Vec::with_capacity(trials);
    for mut trial in running {
        let deadline = Instant::now()
            + trial
                .expires
                .duration_since(SystemTime::now())
                .unwrap_or_default()
            + Duration::from_secs(10);
        let pid = trial.child.id();
        loop {
            // The child is ours: it stays a zombie until we reap it, so read its state.
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat
                .rsplit_once(") ")
                .is_none_or(|(_, rest)| rest.starts_with('Z'))
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "pid {pid} outlived its grant by 10 s"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(
            SystemTime::now()
                .duration_since(trial.expires)
                .unwrap_or_default(),
        );
        trial.child.wait()?;
    }
    Ok(latencies)
}
