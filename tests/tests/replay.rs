//! Replay plays a session's terminal once, as the user saw it. A real ssh login (sshd, PAM)
//! runs tmux, and in its pane `sudo whoami` (Debian's sudo, `use_pty`: the command gets a pty
//! of its own, whose output sudo relays to its terminal) and a command. Three terminals are
//! live at once: whoami writes `root` to sudo's pty, sudo relays it to the pane, and the
//! tmux client draws the pane on the login terminal. Every one of those bytes is recorded
//! once per terminal; replay must show each line once, as the login terminal showed it.
//! Needs root; under `CI=true` a run without root fails instead of skipping.

use std::time::Duration;

use tests::{
    Scratch,
    agent::Agent,
    collector::Collector,
    mark, marker, operator, privileged,
    ssh::{Sshd, User},
};

const USER: &str = "recorder-replay";

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
    let agent = Agent::shipping(&dir.join("spool"), &url, &[]);

    let inner = marker("in-tmux");
    let done = marker("done");
    let socket = marker("tmux");
    let command = format!(
        "TERM=xterm tmux -f /dev/null -L {socket} new-session \
         'sudo -n whoami; /bin/echo {inner}; sleep 0.5'; /bin/echo {done}"
    );
    let out = account.ssh(&sshd, &command).output().expect("run ssh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = out.stdout;
    // tmux may repaint its window (a busy host, a status refresh), so the client can see a
    // line more than once; what replay must match is what the client saw.
    assert!(
        count(&seen, "root") >= 1,
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
    let marked = mark(&after);
    let within = Duration::from_secs(30);
    let echo = operator::stored_exec(&url, USER, &done, within);
    let _ = operator::stored_exec(&url, &marked, &after, within);
    let key = echo["session"].as_str().expect("a session key").to_owned();

    let sessions = operator::json_lines(&url, &["sessions", "--json"]);
    let session = sessions
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap_or_else(|| panic!("{key} in {sessions:?}"));
    let login_tty = session["login_tty"].as_str().unwrap().to_owned();
    let terminals: Vec<String> = session["terminals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["device"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        terminals.len(),
        3,
        "the login terminal, the tmux pane and sudo's: {session}"
    );
    assert_eq!(
        terminals[0], login_tty,
        "the login terminal first: {session}"
    );

    // The login terminal, as the user saw it: each line once, byte for byte.
    let played = replay(&url, &[&key]);
    assert_eq!(
        without_cr(&played),
        without_cr(&seen),
        "replay:\n{}\nthe ssh client saw:\n{}",
        String::from_utf8_lossy(&played),
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(count(&played, "root"), count(&seen, "root"));
    assert_eq!(count(&played, &inner), count(&seen, &inner));

    // The inner terminals, each as it was written: sudo's holds what whoami wrote, the pane
    // what sudo relayed and what the command printed.
    let inner_ttys: Vec<Vec<u8>> = terminals[1..]
        .iter()
        .map(|tty| replay(&url, &[&key, "--tty", tty]))
        .collect();
    assert!(
        inner_ttys.iter().any(|t| t == b"root\n"),
        "sudo's terminal holds whoami's bytes: {inner_ttys:?}"
    );
    assert!(
        inner_ttys
            .iter()
            .any(|t| count(t, "root\r\n") == 1 && count(t, &inner) == 1),
        "the pane holds the relayed line and the command's: {inner_ttys:?}"
    );
    // Every terminal interleaved, on request: the line is there as often as in each terminal
    // (at least once in each; more in the login terminal when tmux repainted it).
    let everything = replay(&url, &[&key, "--all-ttys"]);
    let each = count(&played, "root") + inner_ttys.iter().map(|t| count(t, "root")).sum::<usize>();
    assert!(each >= 3, "{inner_ttys:?}");
    assert_eq!(
        count(&everything, "root"),
        each,
        "{}",
        String::from_utf8_lossy(&everything)
    );
    // A terminal the session never used is refused, naming those it did use.
    let out = operator::run(&url, &["replay", &key, "--tty", "136:4095"]);
    assert!(!out.status.success());
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains(&login_tty), "{refused}");

    drop(agent.stop());
    drop(account);
}
