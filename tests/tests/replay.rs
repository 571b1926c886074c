//! Replay plays a session's terminal once, as the user saw it. A real ssh login (sshd, PAM)
//! runs `sudo whoami` (Debian's sudo, `use_pty`: the command gets a pty of its own, whose
//! output sudo relays to the login terminal) and a command inside tmux (a pane is a pty of
//! its own, drawn again on the login terminal by the tmux client). Every one of those bytes
//! is recorded twice, once per terminal; replay must show each line once. Needs root; under
//! `CI=true` a run without root fails instead of skipping.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    Scratch,
    agent::{Agent, Sink},
    collector::Collector,
    marker, operator, privileged,
    ssh::{Sshd, User},
    with_loginuid,
};

const USER: &str = "recorder-replay";

/// Waits until the collector stores an exec carrying `arg` whose identity is `identity`,
/// and returns it.
fn stored_exec(url: &str, identity: &str, arg: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = operator::json_lines(
            url,
            &[
                "search",
                "--json",
                "--kind",
                "exec",
                "--since",
                "1h",
                "--identity",
                identity,
            ],
        );
        if let Some(v) = found.into_iter().find(|v| {
            v["argv"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == arg))
        }) {
            return v;
        }
        assert!(Instant::now() < deadline, "no stored exec carrying {arg}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn replay(url: &str, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["replay"];
    all.extend(args);
    all.extend(["--speed", "0"]);
    let out = operator::run(url, &all);
    assert!(
        out.status.success(),
        "replay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The bytes with every carriage return taken out: the line discipline of a terminal in
/// cooked mode turns each `\n` the programs write into `\r\n` on its way to the ssh client,
/// and that is the only change between what the terminal was given and what it showed.
fn without_cr(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|&b| b != b'\r').collect()
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

#[test]
fn replay_shows_each_line_of_sudo_and_tmux_once() {
    if !privileged("replay_shows_each_line_of_sudo_and_tmux_once") {
        return;
    }
    let account = User::ensure(USER);
    let sshd = Sshd::start();
    let dir = Scratch::new("replay");
    let collector = Collector::start(&dir.join("store.db"));
    let url = collector.url();
    let spool = dir.join("spool");
    let agent = Agent::start_with(
        Sink::Spool,
        &["--spool", spool.to_str().unwrap(), "--collector", &url],
    );

    let inner = marker("in-tmux");
    let done = marker("done");
    let socket = marker("tmux");
    let command = format!(
        "sudo -n whoami; TERM=xterm tmux -f /dev/null -L {socket} new-session \
         '/bin/echo {inner}; sleep 0.5'; /bin/echo {done}"
    );
    let out = account.ssh(&sshd, &command).output().expect("run ssh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = out.stdout;
    assert_eq!(
        count(&seen, "root"),
        1,
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        count(&seen, &inner) >= 1,
        "{}",
        String::from_utf8_lossy(&seen)
    );

    // Records are submitted in order: once an exec made after the login ended is stored,
    // so is everything the login wrote.
    let after = marker("after");
    let uid = 3_100_000_000 + std::process::id() % 1_000_000;
    let mut cmd = Command::new("/bin/true");
    cmd.arg(&after);
    with_loginuid(&mut cmd, Some(uid));
    assert!(cmd.status().unwrap().success());
    let echo = stored_exec(&url, USER, &done);
    stored_exec(&url, &format!("uid:{uid}"), &after);
    let key = echo["session"].as_str().expect("a session key").to_owned();

    let sessions = operator::json_lines(&url, &["sessions", "--json"]);
    let session = sessions
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap_or_else(|| panic!("{key} in {sessions:?}"));
    let login_tty = session["login_tty"].as_str().unwrap().to_owned();
    let terminals = session["terminals"].as_array().unwrap();
    assert!(
        terminals.len() >= 3,
        "the login terminal, sudo's and the tmux pane: {session}"
    );
    assert_eq!(terminals[0]["device"], login_tty.as_str(), "{session}");
    assert_eq!(
        terminals[0]["opened_by"]["comm"], "sshd",
        "sshd holds the login terminal's master: {session}"
    );
    let by = |comm: &str| {
        terminals
            .iter()
            .find(|t| t["opened_by"]["comm"] == comm)
            .unwrap_or_else(|| panic!("a terminal held by {comm}: {session}"))["device"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let sudo_tty = by("sudo");

    // The login terminal, as the user saw it: each line once, byte for byte.
    let played = replay(&url, &[&key]);
    assert_eq!(
        without_cr(&played),
        without_cr(&seen),
        "replay:\n{}\nthe ssh client saw:\n{}",
        String::from_utf8_lossy(&played),
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(count(&played, "root"), 1);
    assert_eq!(count(&played, &inner), count(&seen, &inner));

    // sudo's own terminal: what whoami wrote, as it wrote it.
    let inner_tty = replay(&url, &[&key, "--tty", &sudo_tty]);
    assert_eq!(
        inner_tty,
        b"root\n",
        "{}",
        String::from_utf8_lossy(&inner_tty)
    );
    // Every terminal interleaved, on request: the relayed line is there twice.
    let everything = replay(&url, &[&key, "--all-ttys"]);
    assert_eq!(count(&everything, "root"), 2);
    // A terminal the session never used is refused, naming those it did use.
    let out = operator::run(&url, &["replay", &key, "--tty", "136:4095"]);
    assert!(!out.status.success());
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains(&login_tty), "{refused}");

    drop(agent.stop());
    drop(account);
}
