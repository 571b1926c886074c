//! End-to-end tier: a real SSH login through sshd and PAM (`pam_loginuid`), and sudo inside
//! it. Needs root; under `CI=true` a run without root fails instead of skipping.

use std::{
    fs::File,
    io::{Read, Write as _},
    os::fd::AsRawFd as _,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tests::{
    agent::{Agent, tty_data},
    collector::{Collector, scratch_dir},
    marker, privileged,
    pty::{Pty, set_window},
    ssh::{Sshd, User},
};

const USER: &str = "recorder-login";
/// An account with a password, which its sudo rule asks for.
const PW_USER: &str = "recorder-pw";

fn ids(v: &Value) -> (u64, u64) {
    (v["uid"].as_u64().unwrap(), v["euid"].as_u64().unwrap())
}

/// `ssh -tt user@127.0.0.1 'id; sudo -n id'`: every exec and tty record of that login is
/// the user's, sudo included, and root's own side of it is not.
#[test]
fn an_ssh_login_and_its_sudo_are_attributed_to_the_user() {
    if !privileged("an_ssh_login_and_its_sudo_are_attributed_to_the_user") {
        return;
    }
    let account = User::ensure(USER);
    let uid = account.uid;
    let sshd = Sshd::start();
    let agent = Agent::start(&[]);
    let mark = marker("login");
    let text = account.login(&sshd, &format!("id; sudo -n id; echo {mark}"));
    assert!(
        text.contains(&format!("uid={uid}({USER})")) && text.contains("uid=0(root)"),
        "{text}"
    );
    agent.sync();
    let out = agent.stop();
    drop(account);

    let user = json!({"kind": "human", "name": USER});
    let client = out
        .events
        .iter()
        .find(|v| v["kind"] == "exec" && v["comm"] == "ssh" && v["ppid"] == std::process::id())
        .expect("root's own ssh client exec is recorded");
    assert_ne!(
        client["identity"], user,
        "root's side of the login is not the user: {client}"
    );
    let sudo = out
        .events
        .iter()
        .find(|v| v["kind"] == "exec" && v["comm"] == "sudo")
        .expect("sudo exec");
    assert_eq!(
        ids(sudo),
        (u64::from(uid), 0),
        "sudo is setuid: the user's uid, euid 0"
    );
    let session = sudo["sessionid"]
        .as_u64()
        .expect("a login has an audit session");
    assert_ne!(client["sessionid"].as_u64(), Some(session));
    let in_session: Vec<&Value> = out
        .events
        .iter()
        .filter(|v| v["sessionid"].as_u64() == Some(session))
        .collect();

    let ids_run: Vec<(u64, u64)> = in_session
        .iter()
        .filter(|v| v["kind"] == "exec" && v["filename"] == "/usr/bin/id")
        .map(|v| ids(v))
        .collect();
    assert!(
        ids_run.contains(&(u64::from(uid), u64::from(uid))),
        "plain id as the user: {ids_run:?}"
    );
    assert!(
        ids_run.contains(&(0, 0)),
        "id under sudo runs as root: {ids_run:?}"
    );
    let output: Vec<u8> = in_session
        .iter()
        .filter(|v| v["kind"] == "tty_out")
        .flat_map(|v| tty_data(v))
        .collect();
    let output = String::from_utf8_lossy(&output);
    assert!(
        output.contains("uid=0(root)") && output.contains(&format!("uid={uid}({USER})")),
        "{output}"
    );
    assert!(output.contains(&mark), "{output}");
    each_id_line_is_in_a_record_of_its_own_process(&in_session, uid);
    let root = &sudo["session_root"];
    for v in &in_session {
        assert_eq!(v["loginuid"], uid, "{v}");
        assert_eq!(
            v["identity"], user,
            "every event of the login is the user's: {v}"
        );
        assert_eq!(
            &v["session_root"], root,
            "one root for the whole login: {v}"
        );
    }
    the_login_roots_where_it_began(&out.events, root);
}

/// The login's root is sshd's process that ran `pam_loginuid`, and its start is when it
/// forked, as the table saw it: a root found before its fork was (an image digest that
/// overtook it once did this) has no start, and reads as boot time.
fn the_login_roots_where_it_began(events: &[Value], root: &Value) {
    let root_fork = events
        .iter()
        .find(|v| v["kind"] == "fork" && v["pid"] == root["pid"])
        .expect("the root's fork is recorded");
    assert_eq!(
        root_fork["comm"], "sshd",
        "the login began in sshd, where pam_loginuid ran: {root_fork}"
    );
    assert!(
        root["start"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{root}"
    );
    let started = root["start_unix_nano"].as_u64().expect("a start");
    let forked = root_fork["time_unix_nano"].as_u64().expect("a time");
    assert!(
        started.abs_diff(forked) < 1_000_000_000,
        "the root started when it forked: {root} {root_fork}"
    );
}

/// A login that outlives its agent keeps one session key. The next agent of the boot finds
/// the login's root already running and reads its start from `/proc`, where the first saw
/// it fork; both map it through the boot's clock kept in the spool. Before, the two keys
/// differed by the fork record's few microseconds and by each run's reading of the clocks,
/// and a replay or export of the session held only what one agent recorded.
#[test]
fn a_login_keeps_its_session_key_across_an_agent_restart() {
    if !privileged("a_login_keeps_its_session_key_across_an_agent_restart") {
        return;
    }
    let account = User::ensure(USER);
    let sshd = Sshd::start();
    let dir = scratch_dir("login-restart");
    let spool = dir.join("spool");
    let flags = ["--spool", spool.to_str().unwrap()];
    let gate = std::env::temp_dir().join(marker("gate"));
    let (before, after) = (marker("before"), marker("after"));
    let printed = |agent: &Agent, text: &str| {
        agent
            .wait_for(Duration::from_secs(30), |v| {
                v["kind"] == "tty_out" && String::from_utf8_lossy(&tty_data(v)).contains(text)
            })
            .unwrap_or_else(|| panic!("no terminal line {text:?}:\n{}", agent.log()))
    };

    let first = Agent::start(&flags);
    let mut login = account
        .ssh(
            &sshd,
            &format!(
                "echo {before}; while [ ! -e {} ]; do sleep 0.1; done; echo {after}",
                gate.display()
            ),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh");
    let seen_first = printed(&first, &before);
    drop(first.stop());
    let second = Agent::start(&flags);
    File::create(&gate).expect("open the gate");
    assert!(login.wait().expect("ssh ends").success());
    let seen_second = printed(&second, &after);
    drop(second.stop());
    let _ = std::fs::remove_file(&gate);

    assert_eq!(seen_first["sessionid"], seen_second["sessionid"]);
    assert!(seen_first["session"].is_string(), "{seen_first}");
    assert_eq!(
        seen_first["session"], seen_second["session"],
        "one login, one key: {seen_first} {seen_second}"
    );
}

/// The agent joins a task's terminal writes in a row, never one task's with another's: each
/// `id`'s line, the user's and the one under `sudo`, is in a record of its own process, with
/// its own credentials.
fn each_id_line_is_in_a_record_of_its_own_process(in_session: &[&Value], uid: u32) {
    for (line, ids_wanted) in [
        (
            format!("uid={uid}({USER})"),
            (u64::from(uid), u64::from(uid)),
        ),
        ("uid=0(root)".to_owned(), (0, 0)),
    ] {
        let exec = in_session
            .iter()
            .find(|v| v["kind"] == "exec" && v["filename"] == "/usr/bin/id" && ids(v) == ids_wanted)
            .expect("the id exec");
        let record = in_session
            .iter()
            .find(|v| {
                v["kind"] == "tty_out" && String::from_utf8_lossy(&tty_data(v)).contains(&line)
            })
            .expect("the line's record");
        assert_eq!(
            (&record["pid"], ids(record)),
            (&exec["pid"], ids_wanted),
            "{line} is written by its id: {record}"
        );
    }
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// What an ssh client's terminal has shown so far, read as it arrives.
struct Terminal(Arc<Mutex<Vec<u8>>>);

impl Terminal {
    fn read(mut from: impl Read + Send + 'static) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self(seen)
    }

    /// Waits until the terminal has shown `text`; fails with what it did show.
    fn wait_for(&self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            if seen.contains(text) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the terminal never showed {text:?}; it showed {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A password typed at a sudo prompt over a real ssh login (`sudo -k; sudo id`, a
/// password-protected account) is recorded as its length only: its bytes are nowhere in the
/// spool, the store or an operator's output, its keystrokes are one record, so that none is
/// dated, and the input typed with echo on around it is recorded as ever.
#[test]
fn a_password_typed_at_a_sudo_prompt_is_never_recorded() {
    if !privileged("a_password_typed_at_a_sudo_prompt_is_never_recorded") {
        return;
    }
    let password = marker("secret");
    let account = User::ensure_with_password(PW_USER, "/usr/bin/id", &password);
    let sshd = Sshd::start();
    let dir = scratch_dir("no-echo");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let spool = dir.join("spool");
    let agent = Agent::shipping(&spool, &url, &[]);
    let mark = marker("after-sudo");
    let mut ssh = account.ssh(
        &sshd,
        "sudo -k; sudo /usr/bin/id; echo ready-$((6 * 7)); read line; echo \"got $line\"",
    );
    ssh.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = ssh.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let terminal = Terminal::read(child.stdout.take().unwrap());
    // Typed only once sudo asks, with the terminal's echo off, as a person would: a
    // keystroke at a time, each reaching sshd in a packet of its own.
    terminal.wait_for("password for");
    for key in format!("{password}\n").bytes() {
        stdin.write_all(&[key]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    terminal.wait_for("uid=0(root)");
    // Only once sudo has exited: it flushes typed input when it gives the terminal back,
    // and a line typed before would be echoed but never read.
    terminal.wait_for("ready-42");
    stdin.write_all(format!("{mark}\n").as_bytes()).unwrap();
    drop(stdin);
    terminal.wait_for(&format!("got {mark}"));
    assert!(child.wait().unwrap().success());

    let stored =
        tests::operator::stored_exec(&url, PW_USER, "/usr/bin/id", Duration::from_secs(30));
    let session = stored["session"].as_str().unwrap().to_owned();
    // The echo of the marker line is the last thing the session wrote: once stored, so is
    // everything typed before it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let inputs = loop {
        let inputs = tests::operator::json_lines(
            &url,
            &[
                "search",
                "--json",
                "--kind",
                "tty_in",
                "--since",
                "1h",
                "--identity",
                PW_USER,
            ],
        );
        if inputs
            .iter()
            .any(|v| tty_data(v).starts_with(mark.as_bytes()))
        {
            break inputs;
        }
        assert!(std::time::Instant::now() < deadline, "{inputs:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let redacted: Vec<u64> = inputs
        .iter()
        .filter(|v| v["session"] == session.as_str())
        .filter_map(|v| v["redacted_bytes"].as_u64())
        .collect();
    assert_eq!(
        redacted,
        [password.len() as u64 + 1],
        "the password and its newline, counted in one record, which dates no keystroke: \
         {inputs:?}"
    );
    let replay = tests::operator::run(&url, &["replay", &session, "--speed", "0", "--input"]);
    let shown = String::from_utf8_lossy(&replay.stdout);
    assert!(
        shown.contains(&format!(
            "[{} bytes typed without echo, not recorded]",
            password.len() + 1
        )),
        "replay --input shows where the password was typed: {shown}"
    );
    check_asciicast(&url, &session, &dir, &mark, password.len() + 1);
    let everything = tests::operator::run(&url, &["search", "--json", "--since", "1h"]);
    drop(agent.stop());
    drop(collector);
    for output in [&replay, &everything] {
        let printed = [&output.stdout[..], &output.stderr[..]].concat();
        assert!(
            !printed
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "an operator's output holds the password"
        );
    }
    assert_eq!(
        files_holding(&dir, password.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "no file of the spool or the store holds the password"
    );
    drop(account);
}

/// `replay --format asciicast` of the session, read as asciinema reads a cast: a v2 header,
/// then `[time, code, text]` events in time order. Its output is the replay's, its input
/// holds the typed line and the password as `redacted` placeholders, and its sidecar names
/// stored records of the session by their hashes.
fn check_asciicast(url: &str, session: &str, dir: &std::path::Path, typed: &str, redacted: usize) {
    let sidecar = dir.join("session.cast.json");
    let cast = tests::operator::run(
        url,
        &[
            "replay",
            session,
            "--format",
            "asciicast",
            "--sidecar",
            sidecar.to_str().unwrap(),
        ],
    );
    assert!(cast.status.success(), "{cast:?}");
    std::fs::write(dir.join("session.cast"), &cast.stdout).unwrap();
    let text = String::from_utf8(cast.stdout).expect("a cast is UTF-8");
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().unwrap() > 0 && header["height"].as_u64().unwrap() > 0);
    let (mut output, mut input, mut last) = (String::new(), String::new(), 0.0);
    for line in lines {
        let event: Value = serde_json::from_str(line).unwrap();
        let at = event[0].as_f64().unwrap();
        assert!(at >= last, "events in time order: {line}");
        last = at;
        let data = event[2].as_str().unwrap();
        match event[1].as_str().unwrap() {
            "o" => output.push_str(data),
            "i" => input.push_str(data),
            "r" => assert!(data.split_once('x').is_some(), "a resize: {line}"),
            other => panic!("unexpected event code {other}"),
        }
    }
    let played = tests::operator::run(url, &["replay", session, "--speed", "0"]);
    assert_eq!(output, String::from_utf8_lossy(&played.stdout));
    assert!(input.contains(&"*".repeat(redacted)), "{input:?}");
    assert!(input.contains(&format!("{typed}\n")), "{input:?}");

    let sidecar: Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    assert_eq!(sidecar["session"], session);
    let stored = tests::operator::json_lines(
        url,
        &[
            "search",
            "--json",
            "--session",
            session,
            "--kind",
            "tty",
            "--kind",
            "tty_resize",
            "--since",
            "1h",
        ],
    );
    let records = sidecar["records"].as_array().unwrap();
    assert!(!records.is_empty());
    for r in records {
        assert!(
            stored.iter().any(|v| v["chain_id"] == r["chain_id"]
                && v["seq"] == r["seq"]
                && v["hash"] == r["hash"]),
            "the sidecar names a stored record of the session: {r}"
        );
    }
}

/// The window of an ssh client's terminal is the session's: sshd sets it on the session's
/// pty at login and again when the client's window changes, the agent records both, and
/// `replay --format asciicast` draws the cast in the first size and resizes it where the
/// session was resized, before the output that followed.
#[test]
fn an_ssh_sessions_window_sizes_shape_its_cast() {
    if !privileged("an_ssh_sessions_window_sizes_shape_its_cast") {
        return;
    }
    let account = User::ensure(USER);
    let sshd = Sshd::start();
    let dir = scratch_dir("window");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let agent = Agent::shipping(&dir.join("spool"), &url, &[]);
    let mut pty = Pty::open();
    set_window(pty.master.as_raw_fd(), 30, 100).unwrap();
    let slave = pty.take_slave();
    let mark = marker("window");
    let mut ssh = account.ssh(
        &sshd,
        &format!("echo ready; read line; echo \"{mark} $line\""),
    );
    ssh.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let mut child = ssh.spawn().unwrap();
    let terminal = Terminal::read(File::from(pty.master.try_clone().unwrap()));
    terminal.wait_for("ready");
    set_window(pty.master.as_raw_fd(), 40, 120).unwrap();
    // The terminal is not ssh's controlling one, so the kernel does not signal it: told as a
    // shell's job control would be.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGWINCH) };
    // Typed only once the new size is recorded, so the output that follows was drawn in it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let session = loop {
        let sizes = tests::operator::json_lines(
            &url,
            &["search", "--json", "--kind", "tty_resize", "--since", "1h"],
        );
        // sshd's, on the session's pty (the test's own, on the client's terminal, is in no
        // session).
        if let Some(v) = sizes
            .iter()
            .find(|v| v["cols"] == 120 && v["rows"] == 40 && v["identity"]["name"] == USER)
        {
            break v["session"]
                .as_str()
                .expect("in the login session")
                .to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "{sizes:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut master = File::from(pty.master.try_clone().unwrap());
    // ssh gives the session's pty the modes of its own terminal, raw here: a line ends at
    // a line feed.
    master.write_all(b"typed\n").unwrap();
    terminal.wait_for(&format!("{mark} typed"));
    assert!(child.wait().unwrap().success());

    // The resize's session is the one the shell's output is in; once its last output is
    // stored, so is all of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let cast = loop {
        let sidecar = dir.join("window.cast.json");
        let cast = tests::operator::run(
            &url,
            &[
                "replay",
                &session,
                "--format",
                "asciicast",
                "--sidecar",
                sidecar.to_str().unwrap(),
            ],
        );
        assert!(cast.status.success(), "{cast:?}");
        let text = String::from_utf8(cast.stdout).expect("a cast is UTF-8");
        if text.contains(&format!("{mark} typed")) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(agent.stop());
    drop(collector);
    drop(account);
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(100), Some(30))
    );
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let resized = events
        .iter()
        .position(|e| e[1] == "r")
        .unwrap_or_else(|| panic!("no resize in {cast}"));
    assert_eq!(events[resized][2], "120x40");
    let answered = events
        .iter()
        .position(|e| e[1] == "o" && e[2].as_str().unwrap().contains(&format!("{mark} typed")))
        .unwrap();
    assert!(resized < answered, "{cast}");
    assert!(
        events[..resized].iter().any(|e| e[1] == "o"),
        "ready, drawn first: {cast}"
    );
}
