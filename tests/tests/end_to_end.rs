//! End-to-end tier: the real agent ships to a real collector process, and operators read it
//! back with the real client (`recorder`, which `cargo xtask tail|replay|sessions|verify`
//! run) and with a Python client generated from `proto/`. Needs root; under `CI=true` a run
//! without root fails instead of skipping. `cargo xtask test` runs this tier on both stores:
//! `SQLite`, and with `RECORDER_TEST_STORE=postgres` PostgreSQL.

use std::{
    fs,
    io::Write as _,
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Mount,
    agent::{Agent, largest_receipt, receipt_above},
    collector::{Collector, scratch_dir},
    mark, marker, marker_uid, operator, privileged,
    pty::{Pty, in_new_session},
    with_loginuid,
};

/// A loopback address no one listens on, so a collector can be restarted on the same one.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An interactive shell on a fresh pty, in an audit session of its own (loginuid 4242), as
/// a login starts one. The pty is raw, so the master reads exactly what was written to the
/// slave.
struct Shell {
    child: Child,
    pty: Pty,
}

impl Shell {
    fn start() -> Self {
        let mut pty = Pty::open();
        let slave = pty.take_slave();
        let mut cmd = Command::new("/bin/sh");
        cmd.env("PS1", "$ ")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        in_new_session(&mut cmd, slave.as_raw_fd());
        with_loginuid(&mut cmd, Some(4242));
        let child = cmd.spawn().expect("start a shell");
        drop(slave);
        Self { child, pty }
    }

    /// Types `line` and a newline, as a person at the keyboard would.
    fn type_line(&self, line: &str) {
        let mut master = fs::File::from(self.pty.master.try_clone().unwrap());
        master.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn sessionid(&self) -> u32 {
        fs::read_to_string(format!("/proc/{}/sessionid", self.child.id()))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the session of audit session `sessionid` to be listed, and returns its key.
fn session_key(url: &str, sessionid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = operator::json_lines(url, &["sessions", "--json"]);
        if let Some(s) = sessions.iter().find(|s| s["sessionid"] == sessionid) {
            return s["key"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "session {sessionid} not listed: {sessions:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `search` finds an exec of this test's marker uid carrying `arg`.
fn wait_for_exec(url: &str, arg: &str, within: Duration) -> Value {
    operator::stored_exec(url, &format!("uid:{}", marker_uid()), arg, within)
}

/// A command typed in a pty session is in `tail --json` within a second, with its identity;
/// `replay` of the session gives back its output bytes in order; `verify` passes.
#[test]
fn a_typed_command_is_tailed_replayed_and_verified() {
    if !privileged("a_typed_command_is_tailed_replayed_and_verified") {
        return;
    }
    let dir = scratch_dir("e2e");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let agent = Agent::shipping(&dir.join("spool"), &url, &[]);
    let tail = operator::Tail::start(&url, &["--kind", "exec"]);
    let shell = Shell::start();
    let drain = shell.pty.drain_master();
    // The tail is live once it shows an exec that happened after it started.
    let ready = marker("ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "tail never showed a live event");
        Command::new("/bin/true").arg(&ready).status().unwrap();
        if let Ok(v) = tail.lines.recv_timeout(Duration::from_secs(1))
            && operator::argv_has(&v, &ready)
        {
            break;
        }
    }

    let typed = marker("typed");
    let start = Instant::now();
    shell.type_line(&format!("/bin/echo {typed}"));
    let event = loop {
        let v = tail
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the typed command reached the tail");
        if operator::argv_has(&v, &typed) {
            break v;
        }
    };
    let latency = start.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "typed command took {latency:?} to reach the tail"
    );
    assert_eq!(event["identity"]["kind"], "human");
    assert_eq!(event["loginuid"], 4242);
    assert_eq!(event["sessionid"], shell.sessionid());
    assert!(!event["session"].as_str().unwrap().is_empty());

    // Output of known shape, then the end of the session.
    shell.type_line("i=0; while [ $i -lt 50 ]; do echo line $i of the session; i=$((i+1)); done");
    let done = marker("done");
    shell.type_line(&format!("/bin/echo {done}; exit"));
    let key = session_key(&url, shell.sessionid());
    drain.join().unwrap();
    // Records are submitted in order: once an exec started after the shell's end is stored,
    // so is everything the session wrote.
    let after = marker("after");
    let _ = mark(&after);
    wait_for_exec(&url, &after, Duration::from_secs(20));

    let replay = operator::run(&url, &["replay", &key, "--speed", "0"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let text = String::from_utf8(replay.stdout).unwrap();
    let expected = (0..50).fold(String::new(), |mut s, i| {
        use std::fmt::Write as _;
        let _ = writeln!(s, "line {i} of the session");
        s
    });
    assert!(
        text.contains(&expected),
        "replay holds the session's output in order:\n{text}"
    );
    assert!(text.contains(&format!("{typed}\n")) && text.ends_with(&format!("{done}\n")));

    let verify = operator::run(&url, &["verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    drop(agent.stop());
    drop(collector);
}

/// With the collector down for 30 s while sessions run, the agent spools; once it is back,
/// every event reaches the store, the chain is contiguous and `verify` passes.
#[test]
fn a_collector_outage_loses_nothing() {
    if !privileged("a_collector_outage_loses_nothing") {
        return;
    }
    let dir = scratch_dir("outage");
    let addr = free_addr();
    let store = dir.join("store.db");
    let collector = Collector::start_at(&store, addr);
    let url = collector.url();
    let agent = Agent::shipping(&dir.join("spool"), &url, &[]);
    let before = marker("before");
    let _ = mark(&before);
    wait_for_exec(&url, &before, Duration::from_secs(20));
    drop(collector.stop());

    let during = marker("during");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut issued = 0;
    while Instant::now() < deadline {
        let _ = mark(&format!("{during}-{issued}"));
        issued += 1;
        std::thread::sleep(Duration::from_millis(100));
    }

    let collector = Collector::start_at(&store, addr);
    let last = format!("{during}-{}", issued - 1);
    wait_for_exec(&url, &last, Duration::from_mins(1));
    let stored = operator::execs_of(&url, &format!("uid:{}", marker_uid()));
    for i in 0..issued {
        let arg = format!("{during}-{i}");
        assert!(
            stored.iter().any(|v| operator::argv_has(v, &arg)),
            "exec {arg} issued during the outage is stored"
        );
    }
    verify_passes(&url);
    drop(agent.stop());
    drop(collector);
}

/// Two collectors serving one store at once, the second with a witness certificate of its
/// own, as a collector on another machine would have: an agent given both
/// (`--collector A,B`) ships to the first, which is killed (SIGKILL) in the middle of a
/// stream of execs; the agent fails over to the second and resumes where the store stands.
/// Nothing is lost, the chain is not forked, and verify passes, by the collector and by the
/// operator's own: the host's checkpoints cosigned by the first verify through the second.
#[test]
fn the_agent_fails_over_to_the_next_collector_of_its_store() {
    if !privileged("the_agent_fails_over_to_the_next_collector_of_its_store") {
        return;
    }
    let dir = scratch_dir("failover");
    let store = dir.join("store.db");
    let (first_addr, second_addr) = (free_addr(), free_addr());
    let first = Collector::start_at(&store, first_addr);
    let first_url = first.url();
    let standby = first.pki.as_ref().unwrap().collector_named("standby");
    let second = Collector::start_with(
        &store,
        second_addr,
        &[
            "--pki-dir",
            standby.to_str().unwrap(),
            "--state-dir",
            dir.join("standby-state").to_str().unwrap(),
        ],
    );
    let second_url = second.url();
    let agent = Agent::shipping(
        &dir.join("spool"),
        &format!("{first_url},{second_url}"),
        &[],
    );
    let before = marker("before-failover");
    let _ = mark(&before);
    wait_for_exec(&first_url, &before, Duration::from_secs(20));

    let during = marker("during-failover");
    let issued = 40;
    let mut first = Some(first);
    for i in 0..issued {
        let _ = mark(&format!("{during}-{i}"));
        if i == 10 {
            drop(first.take().unwrap().stop());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_for_exec(
        &second_url,
        &format!("{during}-{}", issued - 1),
        Duration::from_mins(1),
    );
    let stored = operator::execs_of(&second_url, &format!("uid:{}", marker_uid()));
    for arg in std::iter::once(before).chain((0..issued).map(|i| format!("{during}-{i}"))) {
        let times = stored
            .iter()
            .filter(|v| operator::argv_has(v, &arg))
            .count();
        assert_eq!(times, 1, "exec {arg} is stored once");
    }
    verify_passes(&second_url);
    let local = operator::run(&second_url, &["verify", "--local", "--json"]);
    assert!(
        local.status.success(),
        "verify --local: {}{}",
        String::from_utf8_lossy(&local.stdout),
        String::from_utf8_lossy(&local.stderr)
    );
    let log = agent.stop().stderr;
    assert!(
        !log.contains("does not verify"),
        "the agent took the standby's cosignatures:\n{log}"
    );
    assert!(
        log.contains("failing over"),
        "the agent said it failed over:\n{log}"
    );
    drop(second);
}

/// The Python client, generated from `proto/` by grpcio-tools, as a Python shop would.
const PY_CLIENT: &str = r#"
import json, sys, time
sys.path.insert(0, sys.argv[1])
import grpc
from recorder.v1 import collector_pb2 as c, collector_pb2_grpc as g

addr, mark, identity, pki = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
def read(name):
    with open(f"{pki}/{name}", "rb") as f:
        return f.read()
# Mutual TLS with an auditor's certificate, as any operator connects.
credentials = grpc.ssl_channel_credentials(
    root_certificates=read("ca.pem"),
    private_key=read("operator.key"),
    certificate_chain=read("operator.pem"),
)
query = g.QueryStub(grpc.secure_channel(addr, credentials))
since = time.time_ns() - 3600 * 10**9
found = {"search": False, "tail": False}
mine = c.Filter(kinds=["exec"], identity=identity)
page = query.Search(c.SearchRequest(filter=mine, since_unix_nano=since, limit=10000))
for stored in page.events:
    if mark.encode() in stored.event.exec.argv:
        found["search"] = True
        found["identity"] = stored.event.identity.name
for stored in query.Tail(c.TailRequest(filter=mine, since_unix_nano=since), timeout=20):
    if mark.encode() in stored.event.exec.argv:
        found["tail"] = True
        break
print(json.dumps(found))
"#;

/// The contract is usable outside Rust: a Python client generated from `proto/` with
/// grpcio-tools searches and tails the collector, over mutual TLS as an auditor.
#[test]
fn a_python_client_generated_from_the_protos_tails_and_searches() {
    if !privileged("a_python_client_generated_from_the_protos_tails_and_searches") {
        return;
    }
    let dir = scratch_dir("python");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let agent = Agent::shipping(&dir.join("spool"), &url, &[]);
    let python = marker("python");
    let _ = mark(&python);
    wait_for_exec(&url, &python, Duration::from_secs(20));

    let generated = tests::python::generate_protos(&dir);
    let script = dir.join("client.py");
    fs::write(&script, PY_CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&generated)
        .arg(collector.addr.to_string())
        .arg(&python)
        .arg(format!("uid:{}", marker_uid()))
        .arg(
            collector
                .pki
                .as_ref()
                .unwrap()
                .operator("py-auditor", pki::Role::Auditor),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["search"], true, "{found}");
    assert_eq!(found["tail"], true, "{found}");
    assert!(found["identity"].is_string());
    drop(agent.stop());
    drop(collector);
}

/// `recorder verify --json` against the collector at `url` gives verdicts, all ok.
fn verify_passes(url: &str) {
    let verdicts = operator::json_lines(url, &["verify", "--json"]);
    assert!(!verdicts.is_empty());
    for v in &verdicts {
        assert_eq!(v["ok"], true, "{v}");
    }
}

/// Copies a stopped collector's store from `from` to `to`, replacing it: the `SQLite` file
/// with its WAL, or the database.
fn copy_store(from: &std::path::Path, to: &std::path::Path) {
    if tests::collector::backend() == tests::collector::Backend::Postgres {
        tests::postgres::copy(from, to);
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let (src, dst) = (
            format!("{}{suffix}", from.display()),
            format!("{}{suffix}", to.display()),
        );
        let _ = fs::remove_file(&dst);
        if std::path::Path::new(&src).exists() {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Writes 1 MiB blocks of output to a fresh terminal, whose master a thread drains, until
/// `done` is told enough bytes were written (it is asked before each block), by `deadline`;
/// returns how many were.
fn flood_terminal(deadline: Instant, mut done: impl FnMut(usize) -> bool) -> usize {
    let mut pty = Pty::open();
    let drain = pty.drain_master();
    let slave = fs::File::from(pty.take_slave());
    let pattern = tests::block_pattern(256);
    let mut written = 0;
    while !done(written) {
        assert!(
            Instant::now() < deadline,
            "the terminal flood did not end after {written} bytes of output"
        );
        (&slave).write_all(&pattern).unwrap();
        written += pattern.len();
    }
    drop(slave);
    drain.join().unwrap();
    written
}

/// Runs a marker exec named after `name` until one is stored. The agent may still be
/// draining a terminal flood, and what its pipeline cannot take is a counted gap.
fn mark_until_stored(url: &str, name: &str) {
    let identity = format!("uid:{}", marker_uid());
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        let m = marker(name);
        let _ = mark(&m);
        for _ in 0..25 {
            let execs = operator::execs_of(url, &identity);
            if execs.iter().any(|v| operator::argv_has(v, &m)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(Instant::now() < deadline, "no {name} marker stored");
    }
}

/// A collector whose database is restored from an older backup while the agent keeps
/// running: the agent, holding a receipt the restored collector no longer backs, chains a
/// `collector_rollback` alert, and ships again what the backup lacks from its spool, which
/// was never trimmed past what the collector held.
#[test]
fn a_restored_collector_database_is_told_by_the_agent() {
    if !privileged("a_restored_collector_database_is_told_by_the_agent") {
        return;
    }
    let dir = scratch_dir("rollback");
    let addr = free_addr();
    let (store, backup, spool) = (
        dir.join("store.db"),
        dir.join("backup.db"),
        dir.join("spool"),
    );
    let collector = Collector::start_at(&store, addr);
    let url = collector.url();
    let agent = Agent::shipping(&spool, &url, &[]);
    let before = marker("before-backup");
    let _ = mark(&before);
    wait_for_exec(&url, &before, Duration::from_secs(20));
    let backed_up = receipt_above(&spool, 0, Duration::from_secs(30)).expect("a receipt");
    drop(collector.stop());
    copy_store(&store, &backup);

    let collector = Collector::start_at(&store, addr);
    let after = marker("after-backup");
    let _ = mark(&after);
    wait_for_exec(&url, &after, Duration::from_secs(30));
    let cosigned =
        receipt_above(&spool, backed_up + 1, Duration::from_secs(30)).expect("a later receipt");
    // A read, a second on, is chained: the collector signs its own log after it.
    std::thread::sleep(Duration::from_millis(1100));
    let _ = operator::json_lines(&url, &["sessions", "--json"]);
    drop(collector.stop());
    copy_store(&backup, &store);

    let collector = Collector::start_at(&store, addr);
    // The spool still held what the backup lacks: it is shipped again.
    wait_for_exec(&url, &after, Duration::from_mins(1));
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let alerts = operator::json_lines(&url, &["search", "--kind", "alert", "--json"]);
        if let Some(a) = alerts
            .iter()
            .find(|a| a.to_string().contains("collector_rollback"))
        {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no collector_rollback alert: {alerts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(alert.to_string().contains("rolled back"), "{alert}");
    // The log the agent signs from here on is the restored collector's plus what it
    // resent: the collector cosigns it, and verify passes.
    let resumed = receipt_above(&spool, cosigned, Duration::from_secs(30))
        .expect("a receipt after the rollback");
    assert!(resumed > cosigned);
    // The chains and the host's log verify; the collector's own chain is told to be older
    // than the checkpoint of it the collector kept outside the database.
    let out = operator::run(&url, &["verify", "--json"]);
    assert!(!out.status.success(), "a restored database fails verify");
    let verdicts: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for v in verdicts.iter().filter(|v| v.get("ok").is_some()) {
        assert_eq!(v["ok"], true, "{v}");
    }
    assert!(
        verdicts
            .iter()
            .any(|v| v["finding"] == "chain collector/test"
                && v["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("restored to an older state"))),
        "{verdicts:?}"
    );
    drop(agent.stop());
    drop(collector);
}

/// `/etc/machine-id` changes under an enrolled host (a re-imaged or cloned disk): the agent
/// still records and ships as the host it enrolled as, with a `machine_id_change` alert in
/// its chain, and everything verifies. Before, it refused to start.
#[test]
fn a_changed_machine_id_keeps_the_enrolled_host_shipping() {
    if !privileged("a_changed_machine_id_keeps_the_enrolled_host_shipping") {
        return;
    }
    let dir = scratch_dir("machine-id");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let spool = dir.join("spool");
    let host = pki::host_id();
    let certs = tests::pki::of(&url).unwrap().agent(&host);
    let first = Agent::shipping(&spool, &url, &[]);
    assert!(first.stop().success);

    let fake = dir.join("machine-id");
    fs::write(&fake, "0123456789abcdef0123456789abcdef\n").unwrap();
    let _mounted = Mount::bind(&fake, std::path::Path::new("/etc/machine-id"));
    assert_ne!(pki::host_id(), host);
    let agent = Agent::start_with(
        tests::agent::Sink::Spool,
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--collector",
            &url,
            "--pki-dir",
            certs.to_str().unwrap(),
        ],
    );
    let after = marker("new-machine-id");
    let _ = mark(&after);
    let exec = wait_for_exec(&url, &after, Duration::from_secs(30));
    assert_eq!(exec["host"], host.as_str(), "{exec}");
    let alerts = operator::json_lines(&url, &["search", "--kind", "alert", "--json"]);
    let alert = alerts
        .iter()
        .find(|a| a["alert"]["kind"] == "machine_id_change")
        .unwrap_or_else(|| panic!("no machine_id_change alert: {alerts:?}"));
    assert_eq!(alert["host"], host.as_str(), "{alert}");
    assert!(
        alert["alert"]["message"]
            .as_str()
            .unwrap()
            .contains("0123456789abcdef0123456789abcdef"),
        "{alert}"
    );
    assert!(agent.stop().success);
    let verify = operator::run(&url, &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The frame of `segment` whose payload holds `text`: its offset, length and seq, and where
/// `text` starts in the file.
fn frame_holding(segment: &std::path::Path, text: &str) -> (usize, usize, u64, usize) {
    use prost::Message as _;
    let bytes = fs::read(segment).unwrap();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let payload = &bytes[at + 8..at + 8 + len];
        if let Some(i) = payload
            .windows(text.len())
            .position(|w| w == text.as_bytes())
        {
            let record = proto::v1::ChainedEvent::decode(payload).unwrap();
            return (at, 8 + len, record.seq, at + 8 + i);
        }
        at += 8 + len;
    }
    panic!("no frame of {} holds {text}", segment.display());
}

/// A frame in the middle of a sealed spool segment is corrupted while the collector is
/// down: once it is back, everything before and after the frame arrives, the lost record is
/// a `spool_hole` naming its seq and the frame's bytes, the agent chains `spool_corrupt`,
/// and verify passes, counting the record as lost.
#[test]
fn a_corrupt_frame_in_an_old_segment_costs_only_its_record() {
    if !privileged("a_corrupt_frame_in_an_old_segment_costs_only_its_record") {
        return;
    }
    let dir = scratch_dir("corrupt-frame");
    let addr = free_addr();
    let store = dir.join("store.db");
    let spool = dir.join("spool");
    let collector = Collector::start_at(&store, addr);
    let url = collector.url();
    let first = Agent::shipping(&spool, &url, &[]);
    let before = marker("before");
    let _ = mark(&before);
    wait_for_exec(&url, &before, Duration::from_secs(20));
    drop(collector.stop());
    let marks: Vec<String> = (0..20).map(|i| marker(&format!("spooled{i}"))).collect();
    for m in &marks {
        let _ = mark(m);
    }
    // A stop drains the kernel's rings into the spool first.
    drop(first.stop());

    // The stopped agent's segment is sealed; its frame holding the 11th exec is broken.
    let mut segments: Vec<_> = fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let (frame, frame_len, lost_seq, text) = frame_holding(&segments[0], &marks[10]);
    let mut bytes = fs::read(&segments[0]).unwrap();
    bytes[text] ^= 0x20;
    fs::write(&segments[0], &bytes).unwrap();
    eprintln!("broke the frame at {frame} ({frame_len} bytes, seq {lost_seq})");
    // The next agent finds it in the newest segment: corruption, not a torn tail to cut.
    let second = Agent::shipping(&spool, &url, &[]);
    let after = marker("after");
    let _ = mark(&after);

    let collector = Collector::start_at(&store, addr);
    wait_for_exec(&url, &after, Duration::from_mins(1));
    let stored = operator::execs_of(&url, &format!("uid:{}", marker_uid()));
    for (i, m) in marks.iter().enumerate() {
        assert_eq!(
            stored.iter().any(|v| operator::argv_has(v, m)),
            i != 10,
            "exec {i} ({m}) is stored unless its frame was broken"
        );
    }
    // The hole is chained in the collector's commit of the batch after it, before `after`;
    // the agent raises the corruption alert when its sender reaches the broken frame, into
    // its chain after `after`, shipped in a later batch.
    let alerts = tests::eventually(
        Duration::from_secs(30),
        || {
            operator::json_lines(
                &url,
                &["search", "--json", "--kind", "alert", "--since", "1h"],
            )
        },
        |alerts| {
            ["spool_hole", "spool_corrupt"]
                .iter()
                .all(|kind| alerts.iter().any(|a| a["alert"]["kind"] == *kind))
        },
    );
    let alert = |kind: &str| {
        alerts
            .iter()
            .map(|a| &a["alert"])
            .find(|a| a["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} alert in {alerts:?}"))
            .clone()
    };
    let hole = alert("spool_hole");
    assert_eq!(hole["hole"]["first_lost"], lost_seq, "{hole}");
    assert_eq!(hole["seq"], lost_seq + 1, "the next record anchors: {hole}");
    assert_eq!(hole["hole"]["skipped_bytes"], frame_len, "{hole}");
    assert_eq!(hole["hole"]["cause"], "corrupt", "{hole}");
    let corrupt = alert("spool_corrupt");
    assert!(
        corrupt["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{frame_len} bytes of spool segment")),
        "{corrupt}"
    );
    // The collector's verify, and the operator's own over the raw evidence, agree.
    for args in [
        &["verify", "--json"][..],
        &["verify", "--local", "--json"][..],
    ] {
        let out = operator::run(&url, args);
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verdicts: Vec<Value> = printed
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let lost: u64 = verdicts.iter().filter_map(|v| v["lost"].as_u64()).sum();
        assert_eq!(lost, 1, "{args:?} names the lost record: {verdicts:?}");
    }
    drop(second.stop());
    drop(collector);
}

/// The spool's segment files, oldest first.
fn spool_segments(spool: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments
}

/// The collector's database is restored from a backup after the agent trimmed records the
/// backup lacks (a segment filled to its 64 MiB end and acknowledged), so they are nowhere any
/// more. The agent declares them a hole of cause `missing`, anchored at the first record it
/// still has; it signs its log on from what the collector holds; everything after ships, and
/// the chains and the host's log verify, with the records counted lost.
#[test]
fn a_collector_restored_behind_a_trimmed_spool_gets_a_declared_hole() {
    if !privileged("a_collector_restored_behind_a_trimmed_spool_gets_a_declared_hole") {
        return;
    }
    let dir = scratch_dir("rollback-trimmed");
    let addr = free_addr();
    let (store, backup, spool) = (
        dir.join("store.db"),
        dir.join("backup.db"),
        dir.join("spool"),
    );
    let collector = Collector::start_at(&store, addr);
    let url = collector.url();
    let agent = Agent::shipping(&spool, &url, &[]);
    let before = marker("before-backup");
    let _ = mark(&before);
    wait_for_exec(&url, &before, Duration::from_secs(20));
    drop(collector.stop());
    copy_store(&store, &backup);

    // Terminal output until the agent's first segment is full and a second begins; then,
    // with little in the second, until the collector holds the first and it is trimmed.
    let collector = Collector::start_at(&store, addr);
    let first = spool_segments(&spool).remove(0);
    let deadline = Instant::now() + Duration::from_mins(3);
    let written = flood_terminal(deadline, |_| spool_segments(&spool).len() >= 2);
    while first.exists() {
        assert!(
            Instant::now() < deadline,
            "the first segment is still there after {written} bytes of output"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the first segment was trimmed after {written} bytes of terminal output");
    drop(collector.stop());
    copy_store(&backup, &store);

    let collector = Collector::start_at(&store, addr);
    mark_until_stored(&url, "after-restore");
    let alerts = operator::json_lines(
        &url,
        &["search", "--json", "--kind", "alert", "--since", "1h"],
    );
    let hole = alerts
        .iter()
        .map(|a| &a["alert"])
        .find(|a| a["kind"] == "spool_hole")
        .unwrap_or_else(|| panic!("no spool_hole alert in {alerts:?}"));
    assert_eq!(hole["hole"]["cause"], "missing", "{hole}");
    assert!(
        hole["seq"].as_u64() > hole["hole"]["first_lost"].as_u64(),
        "{hole}"
    );
    // The collector's own chain is older than the checkpoint of it kept outside the
    // database, so verify fails on that finding; every chain and log verdict holds.
    let out = operator::run(&url, &["verify", "--json"]);
    let verdicts: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for v in verdicts.iter().filter(|v| v.get("ok").is_some()) {
        assert_eq!(v["ok"], true, "{v}");
    }
    let lost: u64 = verdicts.iter().filter_map(|v| v["lost"].as_u64()).sum();
    assert!(lost > 0, "verify names the records lost: {verdicts:?}");
    assert!(
        verdicts.iter().any(|v| v.get("log").is_some()),
        "the host's log is verified: {verdicts:?}"
    );
    drop(agent.stop());
    drop(collector);
}

/// A host carries the display name its agent was given: `hosts` shows it, `--host` takes it
/// for the host's id, and text output shows it beside the id's first digits.
#[test]
fn a_host_is_shown_and_found_by_its_display_name() {
    if !privileged("a_host_is_shown_and_found_by_its_display_name") {
        return;
    }
    let dir = scratch_dir("host-name");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let name = marker("db");
    let agent = Agent::shipping(&dir.join("spool"), &url, &["--host-name", &name]);
    let arg = marker("named");
    let _ = mark(&arg);
    let exec = wait_for_exec(&url, &arg, Duration::from_secs(20));
    let id = exec["host"].as_str().unwrap().to_owned();

    let hosts = operator::json_lines(&url, &["hosts", "--json"]);
    let listed = hosts
        .iter()
        .find(|h| h["host"] == id.as_str())
        .expect("host listed");
    assert_eq!(listed["name"], name.as_str(), "{listed}");

    let by_name = operator::run(
        &url,
        &[
            "search", "--host", &name, "--kind", "exec", "--since", "5m", "--limit", "100000",
        ],
    );
    assert!(by_name.status.success(), "{by_name:?}");
    let text = String::from_utf8_lossy(&by_name.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&arg))
        .expect("found by the host's name");
    assert!(line.contains(&format!("{name}[{}]", &id[..8])), "{line}");
    let json = operator::json_lines(
        &url,
        &[
            "search", "--json", "--host", &name, "--kind", "exec", "--since", "5m",
        ],
    );
    assert!(json.iter().all(|v| v["host"] == id.as_str()));

    // The name is chained: the chain's first record says it, and verify covers it.
    let start = operator::json_lines(
        &url,
        &[
            "search",
            "--json",
            "--host",
            &id,
            "--kind",
            "chain_start",
            "--since",
            "5m",
        ],
    );
    assert!(
        start
            .iter()
            .any(|v| v["chain_start"]["host_name"] == name.as_str()),
        "{start:?}"
    );
    let verify = operator::run(&url, &["verify", "--host", &name]);
    assert!(verify.status.success(), "{verify:?}");
    drop(agent.stop());
}

/// The size of the host's log that the agent with spool `spool` saved in its `log.state`:
/// where a restarted agent starts rebuilding the log from the spool.
fn saved_log_size(spool: &std::path::Path) -> u64 {
    let state: Value = serde_json::from_slice(&fs::read(spool.join("log.state")).unwrap())
        .expect("log.state is JSON");
    state["size"].as_u64().expect("log.state has a size")
}

/// An agent restarted behind a long segment it never finished reading (killed mid-segment,
/// its `log.state` saved at the end of the segment before) rebuilds the host's log from the
/// spool through sizes the collector cosigned long ago: it signs none of them, so no
/// checkpoint is refused, and it ships again. Before, each refusal ended its stream, the
/// rebuild started over, and the host never shipped again (it happened to this machine's
/// main job).
#[test]
fn an_agent_restarted_behind_a_long_unsealed_segment_ships_again() {
    if !privileged("an_agent_restarted_behind_a_long_unsealed_segment_ships_again") {
        return;
    }
    let dir = scratch_dir("restart-behind");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let spool = dir.join("spool");
    // Terminal output until a first segment is full, sealed and read to its end: the log's
    // state is saved there.
    let agent = Agent::shipping(&spool, &url, &[]);
    flood_terminal(Instant::now() + Duration::from_mins(3), |_| {
        spool.join("log.state").exists()
    });
    assert!(agent.stop().success);
    // A new agent starts a new segment, which stays unsealed while it runs: the saved state
    // stays behind while many reads' worth of records go into it and are cosigned.
    let agent = Agent::shipping(&spool, &url, &[]);
    mark_until_stored(&url, "second-agent");
    let saved = saved_log_size(&spool);
    // 16 MiB of output: its records stay well inside the 64 MiB segment, and the file lags
    // the terminal, so the amount is counted here.
    flood_terminal(Instant::now() + Duration::from_mins(3), |written| {
        written >= 16 << 20
    });
    mark_until_stored(&url, "before-restart");
    let cosigned = receipt_above(&spool, saved + 1_000, Duration::from_secs(30))
        .expect("the collector cosigns the unsealed segment's records");
    assert_eq!(
        saved_log_size(&spool),
        saved,
        "the segment is unsealed, so the state stays behind"
    );
    let unsealed = spool_segments(&spool)
        .last()
        .unwrap()
        .metadata()
        .unwrap()
        .len();
    eprintln!(
        "log.state at {saved} leaves, {cosigned} cosigned, unsealed segment {unsealed} bytes"
    );
    drop(agent.kill());

    let agent = Agent::shipping(&spool, &url, &[]);
    let after = marker("after-restart");
    let _ = mark(&after);
    wait_for_exec(&url, &after, Duration::from_mins(1));
    assert!(
        receipt_above(&spool, cosigned, Duration::from_secs(30)).is_some(),
        "the collector cosigns the restarted agent's log past the first's"
    );
    let log = agent.log();
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("shipping to the collector"))
        .collect();
    assert!(
        ended.is_empty(),
        "the restarted agent's stream ended: {ended:?}"
    );
    assert!(agent.stop().success);
    verify_passes(&url);
    drop(collector);
}

/// A machine started from a copy of another's disk (spool, enrolled key and all) starts a
/// chain naming the same record as the original's next chain: the collector refuses the
/// copy's chain with a `host_cloned` alert, stores nothing of it, and the original, started
/// again, ships on with every verdict ok. Before, the copy's chain was stored and joined the
/// host's log, and verify failed (with the check taken out, this test's store has three
/// findings).
#[test]
fn a_cloned_spool_is_refused_and_the_original_ships_on() {
    if !privileged("a_cloned_spool_is_refused_and_the_original_ships_on") {
        return;
    }
    let dir = scratch_dir("clone");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let (spool, copy) = (dir.join("spool"), dir.join("copy"));
    let run = |spool: &std::path::Path, name: &str| {
        let agent = Agent::shipping(spool, &url, &[]);
        let m = marker(name);
        let _ = mark(&m);
        (agent, m)
    };
    let (agent, m) = run(&spool, "original");
    wait_for_exec(&url, &m, Duration::from_secs(30));
    assert!(agent.stop().success);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&spool)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());

    let (agent, m) = run(&spool, "original-again");
    wait_for_exec(&url, &m, Duration::from_secs(30));
    assert!(agent.stop().success);

    let (clone, m) = run(&copy, "clone");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !clone
        .log()
        .contains("two machines run from copies of one spool")
    {
        assert!(
            Instant::now() < deadline,
            "the clone is not told: {}",
            clone.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let identity = format!("uid:{}", marker_uid());
    assert!(
        !operator::execs_of(&url, &identity)
            .iter()
            .any(|v| operator::argv_has(v, &m)),
        "nothing of the clone's chain is stored"
    );
    drop(clone.stop());

    let (agent, m) = run(&spool, "original-after-clone");
    wait_for_exec(&url, &m, Duration::from_secs(30));
    let alerts = operator::json_lines(&url, &["search", "--kind", "alert", "--json"]);
    assert!(
        alerts.iter().any(|a| a["alert"]["kind"] == "host_cloned"),
        "no host_cloned alert: {alerts:?}"
    );
    let before = largest_receipt(&spool);
    assert!(
        receipt_above(&spool, before, Duration::from_secs(30)).is_some(),
        "the collector cosigns the original's log after the clone"
    );
    assert!(agent.stop().success);
    verify_passes(&url);
}
