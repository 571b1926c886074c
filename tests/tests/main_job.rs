//! The main job (`cargo xtask run`) tells the truth: it says a component is up only after
//! the component said so, one agent runs per host, a component that dies ends the job with
//! a clear message, and Ctrl-C stops everything before the job exits 0. Runs the real
//! `xtask run` on the debug binaries. Needs root; under `CI=true` a run without root fails
//! instead of skipping.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{Scratch, operator, privileged};

/// A main job in a process group of its own, as a terminal runs it.
struct Job {
    child: Child,
    log: Arc<Mutex<String>>,
    /// Reads the job's stderr into `log`; it ends when every holder of the pipe has exited.
    reader: std::thread::JoinHandle<()>,
    dir: Scratch,
    addr: SocketAddr,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Job {
    fn start(addr: SocketAddr) -> Self {
        let dir = Scratch::new("main-job");
        let bin_dir = tests::agent::binary().parent().unwrap().to_path_buf();
        let mut cmd = Command::new(tests::binary("RECORDER_XTASK_BIN", "xtask"));
        cmd.arg("run")
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--listen", &addr.to_string()])
            .arg("--store")
            .arg(dir.join("store.db"))
            .arg("--spool")
            .arg(dir.join("spool"))
            .arg("--pki-dir")
            .arg(dir.join("pki"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("start the main job");
        let log = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child,
            log,
            reader,
            dir,
            addr,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the job says `text`, failing if it exits first.
    fn wait_says(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the job exited ({status}) before saying {text:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the job did not say {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the job to exit by itself.
    fn exits_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last lines are read once the reader has reached the pipe's end, which
                // a component still running would hold open: that is for the caller to find.
                let read_by = Instant::now() + Duration::from_secs(10);
                while !self.reader.is_finished() && Instant::now() < read_by {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the job still runs after {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The processes the job started (its children).
    fn components(&self) -> Vec<(u32, String)> {
        let me = self.child.id();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
                let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
                (ppid == me && !rest.starts_with('Z')).then(|| (pid, name.to_owned()))
            })
            .collect()
    }

    /// Signals the job's process group, as Ctrl-C in a terminal does. (The components have
    /// groups of their own.)
    fn interrupt_group(&self) {
        let pgid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pgid, libc::SIGINT) };
    }
}

impl Drop for Job {
    /// Kills whatever of the job a failing test left, and waits until all of it is gone:
    /// the next test's agent would otherwise find the host's agent lock still held.
    fn drop(&mut self) {
        let pgid = libc::pid_t::try_from(self.child.id()).unwrap();
        let mut groups = vec![pgid];
        groups.extend(
            self.components()
                .into_iter()
                .filter_map(|(pid, _)| libc::pid_t::try_from(pid).ok()),
        );
        for group in &groups {
            // SAFETY: as in `interrupt_group`; each component leads a group of its own.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        for _ in 0..500 {
            // SAFETY: signal 0 only asks whether a group still has members.
            if groups.iter().all(|g| unsafe { libc::kill(-g, 0) } != 0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn started(addr: SocketAddr) -> Job {
    let mut job = Job::start(addr);
    job.wait_says("main job: agent ready", Duration::from_mins(2));
    job
}

/// The chains the job's collector holds, asked as the job's local admin operator.
fn host_chains(job: &Job) -> Vec<Value> {
    let out = operator::run_as(
        &format!("https://{}", job.addr),
        &job.dir.join("pki"),
        &["verify", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        // The collector's own chain records the operators' reads, and hosts' logs have
        // verdicts of their own; only hosts' chains here.
        .filter(|v| v.get("chain_id").is_some())
        .filter(|chain| chain["host"] != "collector")
        .collect()
}

#[test]
fn a_second_main_job_is_refused_and_the_first_keeps_running() {
    if !privileged("a_second_main_job_is_refused_and_the_first_keeps_running") {
        return;
    }
    let mut first = started(free_addr());
    let log = first.log();
    let ready = log.find("collector ready").expect("collector ready said");
    assert!(
        log[ready..].contains("listening on") && log.contains("store") && log.contains("spool"),
        "the summary names the address, store and spool:\n{log}"
    );
    assert!(
        log.contains("cargo xtask tail"),
        "and what to try next:\n{log}"
    );

    // Same address: the second collector cannot listen.
    let mut same_port = Job::start(first.addr);
    let status = same_port.exits_within(Duration::from_secs(20));
    assert!(!status.success(), "{status}");
    let said = same_port.log();
    assert!(
        said.contains(&first.addr.to_string()) && said.contains("collector did not start"),
        "{said}"
    );
    assert!(!said.contains("agent ready"), "{said}");

    // Another address: its collector starts, its agent refuses, and its collector is
    // stopped with it.
    let mut second = Job::start(free_addr());
    let status = second.exits_within(Duration::from_mins(1));
    assert!(!status.success(), "{status}");
    let said = second.log();
    assert!(
        said.contains("another agent already runs on this host")
            && said.contains("agent.lock")
            && said.contains("agent did not start"),
        "{said}"
    );
    assert!(said.contains("stopped the collector"), "{said}");
    assert!(
        second.components().is_empty(),
        "the second job left nothing running"
    );

    assert!(first.child.try_wait().unwrap().is_none(), "{}", first.log());
    assert_eq!(first.components().len(), 2, "{:?}", first.components());
    // The agent is ready once its chain starts in its spool; it is stored a moment later.
    let chains = tests::eventually(
        Duration::from_secs(20),
        || host_chains(&first),
        |chains| !chains.is_empty(),
    );
    assert_eq!(chains.len(), 1, "one agent, one chain: {chains:?}");
    first.interrupt_group();
    assert!(first.exits_within(Duration::from_secs(30)).success());
}

#[test]
fn a_dead_collector_ends_the_main_job_and_its_agent() {
    if !privileged("a_dead_collector_ends_the_main_job_and_its_agent") {
        return;
    }
    let mut job = started(free_addr());
    let components = job.components();
    let collector = components
        .iter()
        .find(|(_, name)| name == "collector")
        .expect("a collector")
        .0;
    // SAFETY: killing the job's own child, as a crash would.
    unsafe { libc::kill(libc::pid_t::try_from(collector).unwrap(), libc::SIGKILL) };
    let status = job.exits_within(Duration::from_secs(30));
    assert!(!status.success(), "{status}");
    let said = job.log();
    assert!(
        said.contains("the collector exited") && said.contains("signal: 9"),
        "{said}"
    );
    assert!(job.components().is_empty(), "the agent was stopped with it");
}

#[test]
fn ctrl_c_stops_both_and_the_job_exits_zero() {
    if !privileged("ctrl_c_stops_both_and_the_job_exits_zero") {
        return;
    }
    let mut job = started(free_addr());
    let pids: Vec<u32> = job.components().into_iter().map(|(pid, _)| pid).collect();
    assert_eq!(pids.len(), 2, "collector and agent");
    job.interrupt_group();
    let status = job.exits_within(Duration::from_secs(30));
    assert!(
        status.success(),
        "{status:?} {:?}:\n{}",
        status.signal(),
        job.log()
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} is gone (reaped) before the job exits"
        );
    }
    let log = job.log();
    assert!(log.contains("agent exit status: 0"), "{log}");
    // The agent stopped first, so its stream ended while the collector still served it,
    // and nothing warned on the way out.
    let stopping = log
        .find("main job: stopping")
        .expect("the job said it stops");
    let (agent_stopped, collector_stopping) = (
        log.find("agent::sinks::metrics: stopped")
            .expect("the agent's last line"),
        log.find("collector: stopping on")
            .expect("the collector's first line of stopping"),
    );
    assert!(agent_stopped < collector_stopping, "{log}");
    assert!(
        !log[stopping..].contains(" WARN ") && !log[stopping..].contains(" ERROR "),
        "{log}"
    );
}
