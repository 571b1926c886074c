//! The agent under test: the real binary, started with `--stdout`, its JSON lines collected.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::notify::Notify;

/// The agent binary: `RECORDER_AGENT_BIN`, else the workspace's debug build.
#[must_use]
pub fn binary() -> PathBuf {
    crate::binary("RECORDER_AGENT_BIN", "agent")
}

/// A command running the agent with no settings file: a test's flags are all its settings,
/// whatever the machine's /etc/recorder holds.
#[must_use]
pub fn command() -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(["--config", "/dev/null"]);
    cmd
}

/// Agent flags for a ring buffer too small, and drained too rarely, to keep up with a
/// flood: for tests that need the kernel to lose records.
pub const LOSSY: [&str; 6] = [
    "--ring-bytes",
    "65536",
    "--drain-ms",
    "500",
    "--wakeup-bytes",
    "1000000000",
];

/// Where the agent's events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// `--stdout`, every line parsed and kept for the test.
    Collect,
    /// `--stdout` into /dev/null: the agent pays for encoding, nobody reads.
    DevNull,
    /// `--discard`: drained, decoded and counted, not encoded.
    Discard,
    /// Neither: the caller names the sink (`--spool`, with or without `--collector`).
    Spool,
    /// `--stdout`, but nothing reads it until `Agent::release_stdout`: a stalled consumer,
    /// which stalls the agent's JSON stage.
    Stalled,
}

pub struct Agent {
    child: Child,
    notify: Notify,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// Lets a `Sink::Stalled` agent's output be read.
    gate: Option<std::sync::mpsc::Sender<()>>,
    /// Whether stopping it leaves its pinned enforcement for the next agent.
    keep_pins: bool,
}

/// What a stopped agent printed.
pub struct Output {
    pub events: Vec<Value>,
    pub stderr: String,
    pub success: bool,
}

const START_TIMEOUT: Duration = Duration::from_mins(2);

impl Agent {
    /// Starts the agent and returns once it reports, as a service manager would see it,
    /// that capture is live.
    #[must_use]
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(Sink::Collect, extra)
    }

    /// Starts an agent spooling to `spool` and shipping to the collector at `url`.
    #[must_use]
    pub fn shipping(spool: &std::path::Path, url: &str, extra: &[&str]) -> Self {
        Self::shipping_with(Sink::Spool, spool, url, extra)
    }

    /// Like [`Agent::shipping`], with events also going to `sink`.
    #[must_use]
    pub fn shipping_with(sink: Sink, spool: &std::path::Path, url: &str, extra: &[&str]) -> Self {
        let args = shipping_args(spool, url, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with(sink, &args)
    }

    /// Like [`Agent::shipping`], running `cmd`: another binary, or another settings file (an
    /// installed package's, say).
    #[must_use]
    pub fn shipping_command(
        cmd: Command,
        spool: &std::path::Path,
        url: &str,
        extra: &[&str],
    ) -> Self {
        let args = shipping_args(spool, url, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_command(cmd, Sink::Spool, &args)
    }

    /// Starts the agent with the given sink; returns once capture is live.
    #[must_use]
    pub fn start_with(sink: Sink, extra: &[&str]) -> Self {
        Self::start_command(command(), sink, extra)
    }

    /// Starts `cmd`, an agent with its settings file, with the given sink; returns once
    /// capture is live.
    fn start_command(mut cmd: Command, sink: Sink, extra: &[&str]) -> Self {
        let collect = matches!(sink, Sink::Collect | Sink::Stalled);
        let sink_flag = match sink {
            Sink::Discard => Some("--discard"),
            Sink::Spool => None,
            Sink::Collect | Sink::DevNull | Sink::Stalled => Some("--stdout"),
        };
        let notify = Notify::new();
        notify.pass_to(&mut cmd);
        let mut child = cmd
            .args(sink_flag)
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(if collect {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let (gate, opened) = std::sync::mpsc::channel::<()>();
        let stalled = sink == Sink::Stalled;
        if let Some(out) = child.stdout.take() {
            let sink = Arc::clone(&events);
            readers.push(std::thread::spawn(move || {
                if stalled {
                    // Released, or the agent dropped: either way, read what it printed.
                    let _ = opened.recv();
                }
                let mut out = BufReader::new(out);
                let mut line = String::new();
                loop {
                    line.clear();
                    let n = out
                        .read_line(&mut line)
                        .expect("agent stdout is UTF-8 lines");
                    // A last line without its newline is one the agent was killed while
                    // writing (standard output is buffered, not written a line at a time).
                    if n == 0 || !line.ends_with('\n') {
                        break;
                    }
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
                    sink.lock().unwrap().push(value);
                }
            }));
        }
        let err = child.stderr.take().expect("stderr");
        let log = Arc::clone(&stderr);
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        }));
        let mut agent = Self {
            child,
            notify,
            events,
            stderr,
            readers,
            gate: stalled.then_some(gate),
            keep_pins: false,
        };
        if let Err(why) = agent.notify.wait_ready(&mut agent.child, START_TIMEOUT) {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
            agent.join_readers();
            panic!(
                "the agent did not start: {why}:\n{}",
                agent.stderr.lock().unwrap()
            );
        }
        agent
    }

    /// Waits until the agent has reported a status (`sd_notify` `STATUS=`) holding `text`:
    /// for example the id of a grant it has adopted.
    #[must_use]
    pub fn wait_for_status(&self, timeout: Duration, text: &str) -> bool {
        self.notify.wait_status(timeout, text)
    }

    /// Every status the agent has reported (`sd_notify` `STATUS=`), oldest first.
    #[must_use]
    pub fn statuses(&self) -> Vec<String> {
        self.notify.statuses()
    }

    /// The agent's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the agent has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the agent has printed, so far, that matches `pred`.
    #[must_use]
    pub fn events_where(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| pred(v))
            .cloned()
            .collect()
    }

    /// Waits until an event matching `pred` has arrived, and returns it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events.lock().unwrap().iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exec event, successful or failed, of `filename` as the caller named it.
    #[must_use]
    pub fn exec_of(&self, filename: &str) -> Value {
        self.wait_for(Duration::from_secs(30), |v| {
            v["kind"] == "exec" && v["filename"] == filename
        })
        .unwrap_or_else(|| {
            panic!(
                "no exec event of {filename}:\n{}",
                self.stderr.lock().unwrap()
            )
        })
    }

    /// Waits for the exec event whose argv carries `arg`.
    #[must_use]
    pub fn exec_with_arg(&self, arg: &str) -> Value {
        self.wait_for(Duration::from_secs(30), |v| {
            crate::operator::argv_has(v, arg)
        })
        .unwrap_or_else(|| {
            panic!(
                "no exec event carrying {arg}:\n{}",
                self.stderr.lock().unwrap()
            )
        })
    }

    /// Runs `/bin/true MARKER` and waits for its exec event. Records are submitted in order,
    /// so once a marker arrives, everything the caller did before it has been drained. A
    /// marker can itself be lost to a full ring buffer, so a new one is sent until one lands.
    pub fn sync(&self) {
        for _ in 0..30 {
            let mark = crate::marker("sync");
            let status = Command::new("/bin/true")
                .arg(&mark)
                .status()
                .expect("run /bin/true");
            assert!(status.success());
            let seen = self.wait_for(Duration::from_secs(2), |v| {
                v["kind"] == "exec"
                    && v["argv"].get(1).and_then(Value::as_str) == Some(mark.as_str())
            });
            if seen.is_some() {
                return;
            }
        }
        panic!(
            "no sync marker arrived in 60 s:\n{}",
            self.stderr.lock().unwrap()
        );
    }

    /// Starts reading a `Sink::Stalled` agent's standard output.
    pub fn release_stdout(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.send(()).expect("the stdout reader waits");
        }
    }

    /// Stops the agent with SIGINT, as an operator would, and returns all it printed.
    #[must_use]
    pub fn stop(self) -> Output {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        self.collect()
    }

    /// Kills the agent with SIGKILL, as a crash would, and returns what it printed.
    #[must_use]
    pub fn kill(mut self) -> Output {
        let _ = self.child.kill();
        self.collect()
    }

    /// Kills the agent with SIGKILL and leaves what it pinned in the kernel (its deny maps
    /// and enforcement program) in place, as a crash does; the next agent adopts them.
    #[must_use]
    pub fn kill_leaving_enforcement(mut self) -> Output {
        self.keep_pins = true;
        self.kill()
    }

    fn collect(mut self) -> Output {
        self.release_stdout();
        let status = self.child.wait().expect("wait agent");
        self.uninstall();
        self.join_readers();
        let events = std::mem::take(&mut *self.events.lock().unwrap());
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap());
        Output {
            events,
            stderr,
            success: status.success(),
        }
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            r.join().expect("reader thread");
        }
    }
}

impl Agent {
    /// Removes what the agent pinned, so the next test starts with nothing attached,
    /// unless the test keeps it for the next agent.
    fn uninstall(&mut self) {
        if std::mem::replace(&mut self.keep_pins, true) {
            return;
        }
        let status = command()
            .arg("--uninstall")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Not an assertion: this also runs while a failing test unwinds.
        if !status.as_ref().is_ok_and(std::process::ExitStatus::success) {
            eprintln!("agent --uninstall failed: {status:?}");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.uninstall();
    }
}

impl Output {
    /// Every event it printed, as JSON text: what a search of its output for a string
    /// reads.
    #[must_use]
    pub fn printed(&self) -> String {
        self.events.iter().map(ToString::to_string).collect()
    }

    /// A `key=value` total from the agent's closing `stopped` log line.
    #[must_use]
    pub fn total(&self, key: &str) -> Option<u64> {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.contains(" stopped "))?;
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str())?.parse().ok())
    }
}

/// The flags of an agent spooling to `spool` and shipping to the collector at `url`: with
/// this host's certificate from that collector's test PKI, or plaintext when it has none.
#[must_use]
fn shipping_args(spool: &std::path::Path, url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--spool",
        spool.to_str().expect("UTF-8 path"),
        "--collector",
        url,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Several collectors of one store (`--collector A,B`) have its one PKI.
    match crate::pki::of(url.split(',').next().unwrap_or(url)) {
        Some(pki) => {
            args.push("--pki-dir".into());
            args.push(pki.agent(&pki::host_id()).to_str().unwrap().to_owned());
        }
        None => args.push("--insecure-plaintext".into()),
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Sum of `lost_records` and `lost_bytes` over the gap events for one record kind, but for
/// unseen writes.
#[must_use]
pub fn lost(events: &[Value], kind: &str) -> (u64, u64) {
    // Unseen writes (sendfile, splice) are gaps too, but of what other processes did.
    lost_where(events, |v| {
        v["lost_kind"] == kind && v["source"] != "unseen"
    })
}

/// Sum of `lost_records` and `lost_bytes` over the gap events that `pred` accepts.
#[must_use]
pub fn lost_where(events: &[Value], pred: impl Fn(&Value) -> bool) -> (u64, u64) {
    events
        .iter()
        .filter(|v| v["kind"] == "gap" && pred(v))
        .fold((0, 0), |(r, b), v| {
            (
                r + v["lost_records"].as_u64().unwrap_or(0),
                b + v["lost_bytes"].as_u64().unwrap_or(0),
            )
        })
}

/// Decoded `data` of a tty event.
#[must_use]
pub fn tty_data(event: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(event["data"].as_str().expect("tty event has data"))
        .expect("data is base64")
}

/// The largest size among the cosigned checkpoints the agent with spool `spool` keeps as
/// receipts (docs/evidence.md, "Receipts"); 0 without any.
#[must_use]
pub fn largest_receipt(spool: &std::path::Path) -> u64 {
    std::fs::read_to_string(spool.join("receipts"))
        .unwrap_or_default()
        .split("\n\n\n")
        .filter_map(|note| note.lines().nth(1)?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits up to `within` for a receipt of more than `size` leaves; its size, or `None`.
#[must_use]
pub fn receipt_above(spool: &std::path::Path, size: u64, within: Duration) -> Option<u64> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let largest = largest_receipt(spool);
        if largest > size {
            return Some(largest);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
