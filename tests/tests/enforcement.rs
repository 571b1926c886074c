//! End-to-end tier for just-in-time grants: real SSH logins on loopback, a real collector
//! holding the grants, the real agent enforcing them in the kernel and from userspace, and
//! the operators' client creating and revoking them. Needs root; under `CI=true` a run
//! without root fails instead of skipping.

use std::{
    fs,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tests::{
    TestCgroup,
    agent::{Agent, Sink},
    collector::{Collector, scratch_dir},
    marker, operator, privileged,
    ssh::{Sshd, User},
};

const USER: &str = "recorder-grant";
/// The loginuid a process of a session writes to leave it.
const ESCAPED_LOGINUID: &str = "4242";
/// A user who may run anything through sudo, for a root shell.
const ROOT_USER: &str = "recorder-rootsh";
/// How long after a grant's end its processes may still live.
const DEATH_WITHIN: Duration = Duration::from_secs(1);

/// A collector (with an optional policy file) and an agent shipping to it.
struct Rig {
    dir: tests::Scratch,
    url: String,
    collector: Option<Collector>,
    agent: Agent,
}

impl Rig {
    fn start(policy: Option<&str>) -> Self {
        Self::start_with(policy, &[])
    }

    /// With extra agent flags.
    fn start_with(policy: Option<&str>, agent_flags: &[&str]) -> Self {
        let dir = scratch_dir("enforce");
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let policy_file = dir.join("policy.json");
        // A killed agent's host is reported silent within the tests' patience.
        let mut extra = vec!["--silent-after", "3s"];
        if let Some(policy) = policy {
            fs::write(&policy_file, policy).unwrap();
            extra.extend(["--policy", policy_file.to_str().unwrap()]);
        }
        let collector = Collector::start_with(&dir.join("store.db"), addr, &extra);
        let url = collector.url();
        let spool = dir.join("spool");
        let agent = Agent::shipping_with(Sink::Collect, &spool, &url, agent_flags);
        assert!(
            agent.wait_for_status(Duration::from_secs(20), "grant view adopted"),
            "the agent never got the collector's grant view"
        );
        Self {
            dir,
            url,
            collector: Some(collector),
            agent,
        }
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    /// `recorder grant create ARGS --json`, once the agent holds the new grant.
    fn grant(&self, args: &[&str]) -> Grant {
        let mut all = vec!["grant", "create"];
        all.extend(args);
        all.push("--json");
        let lines = operator::json_lines(&self.url(), &all);
        let grant = lines.into_iter().next().expect("the new grant");
        let id = grant["id"].as_str().expect("an id").to_owned();
        assert!(
            self.agent
                .wait_for_status(Duration::from_secs(10), &format!(" {id}")),
            "the agent never got grant {id}"
        );
        Grant {
            expires: UNIX_EPOCH
                + Duration::from_nanos(grant["expires_at_unix_nano"].as_u64().unwrap()),
            id,
        }
    }

    /// A grant for `selector` (`--user U`, `--unit U`) lasting `ttl`, with `on_expiry: kill`.
    fn kill_grant(&self, selector: &[&str], ttl: &str) -> Grant {
        let mut args = selector.to_vec();
        args.extend(["--ttl", ttl, "--on-expiry", "kill", "--reason", "CHG-1"]);
        self.grant(&args)
    }

    /// Exports session `key` once every stored event of it, its kill included, is in a
    /// witnessed checkpoint, and checks the bundle offline: by `verify-bundle`, and by the
    /// independent verifier where it runs.
    fn export_verified(&self, key: &str) {
        let url = self.url();
        let stored = operator::json_lines(&url, &["search", "--json", "--session", key]).len();
        let file = self.dir.join("session.bundle");
        let path = file.to_str().unwrap();
        let records = |out: &std::process::Output| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let n = text
                .split_once(": ")
                .and_then(|(_, rest)| rest.split(' ').next()?.parse::<usize>().ok());
            (n, text)
        };
        let (exported, text) = tests::eventually(
            Duration::from_secs(15),
            || {
                // `export` never overwrites: each try writes afresh.
                let _ = fs::remove_file(&file);
                records(&operator::run(
                    &url,
                    &["export", "--session", key, "-o", path],
                ))
            },
            |(n, _)| *n == Some(stored),
        );
        assert_eq!(exported, Some(stored), "{text}");
        let ca = self
            .collector
            .as_ref()
            .unwrap()
            .pki
            .as_ref()
            .unwrap()
            .ca_pem();
        let checked = operator::run(&url, &["verify-bundle", path, "--ca", ca.to_str().unwrap()]);
        assert!(checked.status.success(), "{checked:?}");
        assert_eq!(records(&checked).0, Some(stored), "{checked:?}");
        if tests::python::python_ready() {
            let protos = tests::python::generate_protos(&self.dir);
            let out = tests::python::python_verify(&file, &ca, &protos);
            assert!(out.status.success(), "{out:?}");
        }
    }

    /// The agent's first exec matching `pred`, within 10 s.
    fn exec(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.agent
            .wait_for(Duration::from_secs(10), |v| v["kind"] == "exec" && pred(v))
            .unwrap_or_else(|| panic!("no exec of {what}"))
    }
}

struct Grant {
    id: String,
    expires: SystemTime,
}

/// Whether `pid` still runs (a zombie has died: it only waits to be reaped).
fn alive(pid: u64) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Processes of audit session `session` now.
fn session_pids(session: u64) -> Vec<u64> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/sessionid"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                == Some(session)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Waits until every one of `pids` is dead, and says how long after `since` that was; panics
/// if any lives `DEATH_WITHIN` past it.
fn all_die(pids: &[u64], since: SystemTime) -> Duration {
    let deadline = since + DEATH_WITHIN;
    loop {
        let living: Vec<u64> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if living.is_empty() {
            return SystemTime::now()
                .duration_since(since)
                .unwrap_or(Duration::ZERO);
        }
        assert!(
            SystemTime::now() < deadline,
            "{living:?} of {pids:?} still alive {DEATH_WITHIN:?} after the grant ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn argv_is(v: &Value, argv: &[&str]) -> bool {
    v["argv"]
        .as_array()
        .is_some_and(|a| a.len() == argv.len() && a.iter().zip(argv).all(|(x, y)| x == y))
}

/// A login that runs `sudo -n id`, leaves `sleep 1000` running in the background and waits
/// on it: what a grant's end must kill.
struct Session {
    ssh: Child,
    id: u64,
    pids: Vec<u64>,
    sudo: Value,
}

impl Session {
    fn start(rig: &Rig, user: &User, sshd: &Sshd) -> Self {
        let mark = marker("session");
        let mut session = Self::spawn(user.ssh(
            sshd,
            &format!("sudo -n id; sleep 1000 & /bin/echo {mark}; wait"),
        ));
        let sleep = rig.exec("the background sleep", |v| {
            argv_is(v, &["sleep", "1000"]) && v["loginuid"] == user.uid
        });
        session.id = sleep["sessionid"].as_u64().expect("a login session");
        let id = session.id;
        session.sudo = rig.exec("sudo", |v| {
            v["comm"] == "sudo" && v["sessionid"].as_u64() == Some(id)
        });
        // Every process of the login once the shell waits: it ran the echo after forking
        // the sleep, so the echo's exec is the last one to wait for, and its exit. An echo
        // still alive here would exit by itself, and no kill could name it.
        let echo = rig.exec("the mark", |v| {
            v["sessionid"].as_u64() == Some(id) && tests::operator::argv_has(v, &mark)
        });
        let echo = echo["pid"].as_u64().expect("the echo's pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(echo) {
            assert!(Instant::now() < deadline, "the echo {echo} never exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        // sudo's monitor process (its fork, comm `sudo`) can outlive sudo for a moment on a
        // loaded host and exit by itself: a CI run saw it alive here, exiting with status 1
        // before the grant ended. It ran before the echo, so wait for it too.
        let is_sudo = |pid: &u64| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sudo")
        };
        while session_pids(id).iter().any(is_sudo) {
            assert!(Instant::now() < deadline, "sudo never exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        session.pids = session_pids(id);
        assert!(
            session.pids.contains(&sleep["pid"].as_u64().unwrap()),
            "{:?} lacks the sleep: {sleep}",
            session.pids
        );
        session
    }

    /// A login that runs `sudo -n id` and then sleeps.
    fn start_violating(rig: &Rig, user: &User, sshd: &Sshd) -> Self {
        let is_sudo = |v: &Value| v["comm"] == "sudo" && v["loginuid"] == user.uid;
        let earlier: Vec<Value> = rig
            .agent
            .events_where(|v| v["kind"] == "exec" && is_sudo(v))
            .iter()
            .map(|v| v["sessionid"].clone())
            .collect();
        let mut session = Self::spawn(user.ssh(sshd, "sudo -n id; sleep 1000"));
        session.sudo = rig.exec("sudo", |v| is_sudo(v) && !earlier.contains(&v["sessionid"]));
        session.id = session.sudo["sessionid"].as_u64().unwrap();
        session
    }

    /// Owns the ssh client from the start, so a failing test does not leave it behind.
    fn spawn(mut ssh: Command) -> Self {
        Self {
            ssh: ssh
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            id: 0,
            pids: Vec::new(),
            sudo: Value::Null,
        }
    }

    fn kill_event(&self, rig: &Rig, grant: &str) -> Value {
        rig.agent
            .wait_for(Duration::from_secs(10), |v| {
                v["kind"] == "kill"
                    && v["kill"]["grant_id"] == grant
                    && v["kill"]["sessionid"].as_u64() == Some(self.id)
            })
            .unwrap_or_else(|| panic!("no kill event for grant {grant}"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.ssh.kill();
        let _ = self.ssh.wait();
    }
}

/// The violation the agent records in audit session `session`, within 10 s.
fn violation_in(rig: &Rig, session: u64) -> Value {
    rig.agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "violation" && v["sessionid"].as_u64() == Some(session)
        })
        .unwrap_or_else(|| panic!("no violation in session {session}"))
}

/// Waits, at most `DEATH_WITHIN`, until audit session `session` has no live process.
fn session_ends(session: u64) {
    let deadline = Instant::now() + DEATH_WITHIN;
    while !session_pids(session).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the session lives on: {:?}",
            session_pids(session)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn violations_of(rig: &Rig, session: u64) -> Vec<Value> {
    rig.agent
        .events_where(|v| v["kind"] == "violation" && v["sessionid"].as_u64() == Some(session))
}

/// During the grant sudo is recorded under it, with no violation; at its end the shell, its
/// children and the background sleep all die within a second, and the chain holds the kill.
#[test]
fn a_grant_covers_sudo_and_its_expiry_kills_the_session() {
    if !privileged("a_grant_covers_sudo_and_its_expiry_kills_the_session") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let rig = Rig::start(None);
    let grant = rig.kill_grant(&["--user", USER], "6s");
    let session = Session::start(&rig, &user, &sshd);
    assert_eq!(
        session.sudo["identity"]["grant"], grant.id,
        "sudo is recorded under the grant: {}",
        session.sudo
    );
    assert!(violations_of(&rig, session.id).is_empty());
    let took = all_die(&session.pids, grant.expires);
    let kill = session.kill_event(&rig, &grant.id);
    assert_eq!(kill["kill"]["reason"], "expired", "{kill}");
    // The kernel kills at the deadline too, so a process may be in the kernel's kill
    // records rather than the agent's: together they name every one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let killed: Vec<u64> = rig
            .agent
            .events_where(|v| {
                v["kind"] == "kill"
                    && v["kill"]["grant_id"] == grant.id
                    && v["kill"]["sessionid"].as_u64() == Some(session.id)
            })
            .iter()
            .flat_map(|k| k["kill"]["pids"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p.as_u64())
            .collect();
        if session.pids.iter().all(|p| killed.contains(p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kill events name every process of the session: {killed:?} vs {:?}",
            session.pids
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("expiry to death: {took:?}");
    // Every kill, the agent's and the kernel's, is filed under the session it ended, as
    // that session's events are, and under who was behind it.
    let key = session.sudo["session"]
        .as_str()
        .expect("sudo's session key");
    for kill in rig.agent.events_where(|v| {
        v["kind"] == "kill" && v["kill"]["sessionid"].as_u64() == Some(session.id)
    }) {
        assert_eq!(kill["session"], key, "{kill}");
        assert_eq!(kill["identity"]["name"], USER, "{kill}");
    }
    // So the session's own events in the store end with how it ended.
    let url = rig.url();
    let stored = tests::eventually(
        Duration::from_secs(10),
        || operator::json_lines(&url, &["search", "--json", "--session", key]),
        |events| events.iter().any(|v| v["kill"]["grant_id"] == grant.id),
    );
    assert!(
        stored.iter().any(|v| v["kill"]["grant_id"] == grant.id),
        "no kill among the session's stored events: {stored:?}"
    );
    // The listing of sessions says it was killed.
    let listed = operator::json_lines(&url, &["sessions", "--json"]);
    assert!(
        listed
            .iter()
            .any(|s| s["key"] == key && s["kills"].as_u64() >= Some(1)),
        "{listed:?}"
    );
    rig.export_verified(key);
    // Its replay ends with how it ended.
    let replay = operator::run(&url, &["replay", key, "--speed", "0"]);
    let played = String::from_utf8_lossy(&replay.stdout);
    let pids: Vec<u64> = kill["kill"]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let mark = format!(
        "\u{27e6}KILLED by agent pids {pids:?}: expired grant {}\u{27e7}",
        grant.id
    );
    let last = played.trim_end().lines().last().unwrap_or_default();
    assert!(
        played.contains(&mark) && last.starts_with("\u{27e6}KILLED by "),
        "{replay:?}"
    );
    let verify = operator::run(&url, &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The collector is stopped before the grant ends: the agent's own clock still kills on time.
#[test]
fn the_kill_happens_on_time_with_the_collector_down() {
    if !privileged("the_kill_happens_on_time_with_the_collector_down") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let mut rig = Rig::start(None);
    let grant = rig.kill_grant(&["--user", USER], "6s");
    let session = Session::start(&rig, &user, &sshd);
    drop(rig.collector.take().unwrap().stop());
    assert!(
        SystemTime::now() < grant.expires,
        "the collector stopped before the expiry"
    );
    all_die(&session.pids, grant.expires);
    let kill = session.kill_event(&rig, &grant.id);
    assert_eq!(kill["kill"]["reason"], "expired", "{kill}");
}

/// Revoking a live grant from the operators' client kills its session within a second.
#[test]
fn revoking_a_live_grant_kills_its_session_within_a_second() {
    if !privileged("revoking_a_live_grant_kills_its_session_within_a_second") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let rig = Rig::start(None);
    let grant = rig.kill_grant(&["--user", USER], "10m");
    let session = Session::start(&rig, &user, &sshd);
    assert_eq!(session.sudo["identity"]["grant"], grant.id);
    let revoked = SystemTime::now();
    let out = operator::run(
        &rig.url(),
        &["grant", "revoke", &grant.id, "--reason", "done"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    all_die(&session.pids, revoked);
    let kill = session.kill_event(&rig, &grant.id);
    assert_eq!(kill["kill"]["reason"], "revoked", "{kill}");
}

/// Without a grant, sudo is a violation: recorded in alert mode (the default), killed in
/// kill mode. Review then lists the activity outside any grant, and a grant never used.
#[test]
fn sudo_without_a_grant_is_a_violation_and_kill_mode_kills_it() {
    if !privileged("sudo_without_a_grant_is_a_violation_and_kill_mode_kills_it") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();

    let rig = Rig::start(None);
    let unused = rig.grant(&[
        "--unit",
        "recorder-unused.service",
        "--ttl",
        "1h",
        "--reason",
        "CHG-4",
    ]);
    let text = user.login(&sshd, "sudo -n id");
    assert!(
        text.contains("uid=0(root)"),
        "alert mode lets it run: {text}"
    );
    let sudo = rig.exec("sudo", |v| v["comm"] == "sudo" && v["loginuid"] == user.uid);
    let session = sudo["sessionid"].as_u64().unwrap();
    let violation = violation_in(&rig, session);
    assert_eq!(violation["violation"]["rule"], "root_exec", "{violation}");
    assert_eq!(violation["violation"]["action"], "alert", "{violation}");
    assert_eq!(violation["identity"]["name"], USER, "{violation}");
    let url = rig.url();
    let deadline = Instant::now() + Duration::from_secs(10);
    let review = loop {
        let review = operator::json_lines(&url, &["review", "--json"]);
        let text = serde_json::to_string(&review).unwrap();
        if text.contains(&unused.id) && text.contains(USER) {
            break text;
        }
        assert!(Instant::now() < deadline, "review lacks them: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(review.contains("never used"), "{review}");
    drop(rig);

    let rig = Rig::start(Some(
        r#"{"mode": "kill", "root_exec": true, "guarded": []}"#,
    ));
    let session = Session::start_violating(&rig, &user, &sshd);
    let violation = violation_in(&rig, session.id);
    assert_eq!(violation["violation"]["action"], "kill", "{violation}");
    let kill = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "kill" && v["kill"]["sessionid"].as_u64() == Some(session.id)
        })
        .expect("a kill");
    assert_eq!(kill["kill"]["reason"], "violation", "{kill}");
    session_ends(session.id);
}

/// Fail closed: once the agent's grant view is older than `--fail-closed-after` (here the
/// collector is gone), a cached grant no longer covers sudo, which is a `stale_grants`
/// violation and, with `--fail-closed-kill`, killed.
#[test]
fn a_stale_grant_view_fails_closed() {
    if !privileged("a_stale_grant_view_fails_closed") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let mut rig = Rig::start_with(None, &["--fail-closed-after", "2s", "--fail-closed-kill"]);
    let grant = rig.kill_grant(&["--user", USER], "10m");
    let covered = user.login(&sshd, "sudo -n id");
    assert!(covered.contains("uid=0(root)"), "{covered}");
    let sudo = rig.exec("covered sudo", |v| {
        v["comm"] == "sudo" && v["loginuid"] == user.uid
    });
    assert_eq!(
        sudo["identity"]["grant"], grant.id,
        "a fresh view's grant covers: {sudo}"
    );
    drop(rig.collector.take().unwrap().stop());
    std::thread::sleep(Duration::from_secs(3));
    let session = Session::start_violating(&rig, &user, &sshd);
    let violation = violation_in(&rig, session.id);
    assert_eq!(
        violation["violation"]["rule"], "stale_grants",
        "{violation}"
    );
    assert_eq!(violation["violation"]["action"], "kill", "{violation}");
    assert!(
        session.sudo["identity"]["grant"].is_null(),
        "a stale view covers nothing: {}",
        session.sudo
    );
    session_ends(session.id);
}

/// A non-human identity, a cgroup named like a systemd unit, under a grant that expires:
/// its processes are killed.
#[test]
fn a_unit_with_an_expired_grant_has_its_processes_killed() {
    if !privileged("a_unit_with_an_expired_grant_has_its_processes_killed") {
        return;
    }
    let rig = Rig::start(None);
    let unit = format!("{}.service", marker("unit"));
    let cgroup = TestCgroup::create(&unit);
    let grant = rig.kill_grant(&["--unit", &unit], "4s");
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "sleep 1000 & sleep 1000"]);
    cgroup.enter(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    // A cgroup nested in the unit's (as a container runtime makes) is killed with it.
    let nested = tests::TestCgroup {
        dir: cgroup.dir.join("nested"),
    };
    fs::create_dir(&nested.dir).unwrap();
    let mut inner = Command::new("/bin/sleep");
    inner.arg("1002");
    nested.enter(&mut inner);
    let mut inner = inner.spawn().unwrap();
    let sleep = rig.exec("the unit's sleep", |v| {
        argv_is(v, &["sleep", "1000"]) && v["cgroup_id"] == cgroup.id()
    });
    assert_eq!(sleep["identity"]["kind"], "service", "{sleep}");
    assert_eq!(sleep["identity"]["grant"], grant.id, "{sleep}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let procs = loop {
        let procs: Vec<u64> = fs::read_to_string(cgroup.dir.join("cgroup.procs"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        if procs.len() == 3 {
            break procs;
        }
        assert!(Instant::now() < deadline, "sh and two sleeps: {procs:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut procs = procs;
    procs.push(u64::from(inner.id()));
    all_die(&procs, grant.expires);
    let _ = child.wait();
    let _ = inner.wait();
    let kill = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "kill" && v["kill"]["grant_id"] == grant.id
        })
        .expect("a kill event");
    assert_eq!(kill["kill"]["cgroup_id"], cgroup.id(), "{kill}");

    // The cgroup stays denied in the kernel: a process that joins it later is killed at its
    // next syscall, before it can exec, with nothing in userspace looking.
    let mut late = Command::new("/bin/sleep");
    late.arg("1000");
    cgroup.enter(&mut late);
    let status = late.spawn().unwrap().wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    let by_kernel = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "kill" && v["kill"]["by"] == "kernel"
        })
        .expect("the kernel's kill is recorded");
    assert_eq!(by_kernel["kill"]["grant_id"], grant.id, "{by_kernel}");
    assert_eq!(by_kernel["kill"]["reason"], "expired", "{by_kernel}");
    assert_eq!(by_kernel["cgroup_id"], cgroup.id(), "{by_kernel}");
}

/// The agent is killed (`kill -9`) with 6 s left on a kill-mode grant: the kernel and the
/// reaper still kill the whole session, the background sleep included, within a second of
/// the end. The next agent adopts the pinned program instead of attaching a second one, and
/// chains the kills made while it was down.
#[test]
fn a_killed_agent_still_kills_at_expiry() {
    if !privileged("a_killed_agent_still_kills_at_expiry") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let rig = Rig::start(None);
    let grant = rig.kill_grant(&["--user", USER], "6s");
    let session = Session::start(&rig, &user, &sshd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rig.agent.log().contains("deadline armed in the kernel") {
        assert!(
            Instant::now() < deadline,
            "no deadline armed:\n{}",
            rig.agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let Rig {
        dir,
        url,
        collector: _collector,
        agent,
    } = rig;
    let killed = agent.kill_leaving_enforcement();
    assert!(
        SystemTime::now() < grant.expires,
        "the agent died before the expiry:\n{}",
        killed.stderr
    );
    let took = all_die(&session.pids, grant.expires);
    eprintln!("expiry to death with the agent dead: {took:?}");
    let host = session.sudo["host"].as_str().expect("a host").to_owned();
    let silent = wait_for_alert(&url, "host_silent", &host);
    assert!(
        silent["alert"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing heard")),
        "{silent}"
    );
    let hosts = operator::json_lines(&url, &["hosts", "--json"]);
    let status = hosts.iter().find(|h| h["host"] == host.as_str());
    assert_eq!(
        status.map(|h| &h["state"]),
        Some(&Value::from("silent")),
        "{hosts:?}"
    );
    let agent = Agent::shipping_with(Sink::Collect, &dir.join("spool"), &url, &[]);
    let kill = agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "kill"
                && v["kill"]["grant_id"] == grant.id
                && v["kill"]["sessionid"].as_u64() == Some(session.id)
        })
        .unwrap_or_else(|| panic!("no kill chained by the next agent:\n{}", agent.log()));
    assert!(
        ["kernel", "reaper"].contains(&kill["kill"]["by"].as_str().unwrap_or("")),
        "{kill}"
    );
    assert_eq!(kill["kill"]["reason"], "expired", "{kill}");
    // Filed under the session it ended, though no agent ran when it was made.
    assert_eq!(kill["session"], session.sudo["session"], "{kill}");
    assert_eq!(kill["identity"]["name"], USER, "{kill}");
    wait_for_alert(&url, "host_back", &host);
    // The killed agent's chain, then the one of the agent after it. The host is back once its
    // agent says hello, which can be before the new chain's first batch is stored.
    let verify = tests::eventually(
        Duration::from_secs(15),
        || operator::json_lines(&url, &["verify", "--json", "--host", &host]),
        |verify| verify.iter().filter(|v| v["chain_id"].is_string()).count() >= 2,
    );
    let chains: Vec<&Value> = verify
        .iter()
        .filter(|v| v["chain_id"].is_string())
        .collect();
    assert_eq!(chains.len(), 2, "{verify:?}");
    assert_eq!(chains[0]["ended"], "crashed or killed", "{:?}", chains[0]);
    assert!(
        chains[1]["ended"].is_null(),
        "still running: {:?}",
        chains[1]
    );
    let hosts = operator::json_lines(&url, &["hosts", "--json"]);
    let status = hosts
        .iter()
        .find(|h| h["host"] == host.as_str())
        .expect("the host");
    assert_eq!(status["state"], "live", "{status}");
    assert!(status["head"]["next_seq"].as_u64() > Some(0), "{status}");
    let log = agent.log();
    assert!(
        log.contains("adopted the pinned enforcement program") && !log.contains("attached, pinned"),
        "the next agent adopts the pinned program, attaching nothing twice:\n{log}"
    );
}

/// The collector's alert of `kind` about `host`, within 15 s.
fn wait_for_alert(url: &str, kind: &str, host: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alerts = operator::json_lines(url, &["search", "--json", "--kind", "alert"]);
        if let Some(alert) = alerts
            .into_iter()
            .find(|a| a["alert"]["kind"] == kind && a["alert"]["host"] == host)
        {
            return alert;
        }
        assert!(Instant::now() < deadline, "no {kind} alert for host {host}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Steps the wall clock by `secs` (`date -s` does the same), and steps it back on drop.
struct ClockStep(i64);

impl ClockStep {
    fn by(secs: i64) -> Self {
        step_clock(secs);
        Self(secs)
    }
}

impl Drop for ClockStep {
    fn drop(&mut self) {
        step_clock(-self.0);
    }
}

fn step_clock(secs: i64) {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-parameter; setting the clock needs CAP_SYS_TIME,
    // which a privileged test has.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut now);
        now.tv_sec += secs;
        assert_eq!(
            libc::clock_settime(libc::CLOCK_REALTIME, &raw const now),
            0,
            "cannot step the clock: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The wall clock stepped forward an hour during a kill-mode grant kills nothing early;
/// stepped back an hour, it delays nothing: the session dies within a second of the real
/// end, counted on a clock no one can step.
#[test]
fn a_stepped_wall_clock_moves_no_deadline() {
    if !privileged("a_stepped_wall_clock_moves_no_deadline") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let rig = Rig::start(None);
    let grant = rig.kill_grant(&["--user", USER], "8s");
    let ends = Instant::now()
        + grant
            .expires
            .duration_since(SystemTime::now())
            .expect("the grant has time left");
    let session = Session::start(&rig, &user, &sshd);
    {
        let _forward = ClockStep::by(3600);
        std::thread::sleep(Duration::from_millis(1500));
        let dead: Vec<u64> = session
            .pids
            .iter()
            .copied()
            .filter(|p| !alive(*p))
            .collect();
        assert!(
            dead.is_empty(),
            "killed early with the clock an hour ahead: {dead:?}"
        );
    }
    let _back = ClockStep::by(-3600);
    assert!(Instant::now() < ends, "the test ran past the grant's end");
    loop {
        let living: Vec<u64> = session.pids.iter().copied().filter(|p| alive(*p)).collect();
        if living.is_empty() {
            break;
        }
        assert!(
            Instant::now() < ends + DEATH_WITHIN,
            "{living:?} still alive {DEATH_WITHIN:?} after the real end, the clock an hour behind"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let late = Instant::now().saturating_duration_since(ends);
    eprintln!("real end to death, the clock an hour behind: {late:?}");
    let kill = session.kill_event(&rig, &grant.id);
    assert_eq!(kill["kill"]["reason"], "expired", "{kill}");
}

/// `sudo -i` during an alert-mode grant: the root shell runs with uid 0, yet it is the
/// human acting as root. Covered while the grant lasts; once it has ended, each command the
/// shell runs is a violation.
#[test]
fn a_root_shell_stays_judged_after_its_grant_ends() {
    if !privileged("a_root_shell_stays_judged_after_its_grant_ends") {
        return;
    }
    let user = User::ensure_with(ROOT_USER, "ALL");
    let sshd = Sshd::start();
    let rig = Rig::start(None);
    let grant = rig.grant(&["--user", ROOT_USER, "--ttl", "3s", "--reason", "CHG-9"]);
    let (during, after) = (marker("during"), marker("after"));
    let script = std::env::temp_dir().join(marker("rootsh"));
    fs::write(
        &script,
        format!("/bin/echo {during}\nsleep 5\n/bin/echo {after}\n"),
    )
    .unwrap();
    let mut perms = fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&script, perms).unwrap();
    let text = user.login(&sshd, &format!("sudo -n -i {}", script.to_str().unwrap()));
    assert!(
        text.contains(&after),
        "the root shell ran to its end: {text}"
    );
    let echo = |mark: &str| {
        rig.exec(mark, |v| {
            v["comm"] == "echo" && tests::operator::argv_has(v, mark)
        })
    };
    let (covered, late) = (echo(&during), echo(&after));
    for e in [&covered, &late] {
        assert_eq!(e["uid"], 0, "the root shell's own command: {e}");
        assert_eq!(e["elevated"], true, "{e}");
    }
    assert_eq!(covered["identity"]["grant"], grant.id, "{covered}");
    let session = late["sessionid"].as_u64().unwrap();
    let violation = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "violation"
                && v["sessionid"].as_u64() == Some(session)
                && v["violation"]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains(after.as_str()))
        })
        .unwrap_or_else(|| panic!("no violation for the root shell's command after the grant"));
    assert_eq!(violation["violation"]["rule"], "root_exec", "{violation}");
    assert!(
        !violations_of(&rig, session)
            .iter()
            .any(|v| v["violation"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains(during.as_str()))),
        "nothing during the grant is a violation"
    );
    let _ = fs::remove_file(&script);
}

/// A process of a session under a kill-mode grant writes its loginuid, which gives it a new
/// audit session: it is still attributed to, and dies with, the session it was born in,
/// and the change is chained.
#[test]
fn a_process_that_writes_its_loginuid_still_dies_at_expiry() {
    if !privileged("a_process_that_writes_its_loginuid_still_dies_at_expiry") {
        return;
    }
    let user = User::ensure_with(ROOT_USER, "ALL");
    let sshd = Sshd::start();
    let rig = Rig::start(None);
    let grant = rig.kill_grant(&["--user", ROOT_USER], "6s");
    let mark = marker("escape");
    let mut ssh = Session::spawn(user.ssh(
        &sshd,
        &format!(
            "sudo -n sh -c 'echo {ESCAPED_LOGINUID} > /proc/self/loginuid && exec sleep 1001' & \
             sleep 1000 & sleep 1; /bin/echo {mark}; wait"
        ),
    ));
    let change = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "alert" && v["alert"]["kind"] == "loginuid_change"
        })
        .unwrap_or_else(|| panic!("no loginuid_change chained:\n{}", rig.agent.log()));
    assert_eq!(
        change["loginuid"],
        ESCAPED_LOGINUID.parse::<u64>().unwrap(),
        "{change}"
    );
    let escaped = rig.exec("the escaped sleep", |v| argv_is(v, &["sleep", "1001"]));
    let born = escaped["sessionid"].as_u64().expect("a session");
    assert_eq!(
        escaped["loginuid"], user.uid,
        "attributed as born: {escaped}"
    );
    assert_eq!(escaped["identity"]["name"], ROOT_USER, "{escaped}");
    assert_ne!(change["sessionid"].as_u64(), Some(born), "{change}");
    rig.exec("the mark", |v| tests::operator::argv_has(v, &mark));
    let escaped_pid = escaped["pid"].as_u64().unwrap();
    let mut pids = session_pids(born);
    pids.push(escaped_pid);
    assert!(alive(escaped_pid), "the escaped sleep runs");
    assert!(
        fs::read_to_string(format!("/proc/{escaped_pid}/loginuid"))
            .is_ok_and(|l| l.trim() == ESCAPED_LOGINUID),
        "it did change its loginuid"
    );
    let took = all_die(&pids, grant.expires);
    eprintln!("expiry to death, the loginuid rewritten: {took:?}");
    ssh.id = born;
    drop(ssh);
}

/// A terminal flood at full speed fills a small terminal ring, then the session runs sudo
/// with no grant under a kill-mode policy: exec records have a ring of their own, so the
/// sudo is recorded and judged, the session dies, and the terminal records lost are counted
/// in gaps.
#[test]
fn a_terminal_flood_cannot_hide_an_exec() {
    if !privileged("a_terminal_flood_cannot_hide_an_exec") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let rig = Rig::start_with(
        Some(r#"{"mode": "kill", "root_exec": true, "guarded": []}"#),
        &tests::agent::LOSSY,
    );
    let line = "0123456789".repeat(6);
    let mut session = Session::spawn(user.ssh(
        &sshd,
        &format!("(while :; do echo {line}; done) & sleep 1; sudo -n id; sleep 1000"),
    ));
    let sudo = rig.exec("sudo during the flood", |v| {
        v["comm"] == "sudo" && v["loginuid"] == user.uid
    });
    session.id = sudo["sessionid"].as_u64().unwrap();
    let violation = violation_in(&rig, session.id);
    assert_eq!(violation["violation"]["action"], "kill", "{violation}");
    let kill = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "kill" && v["kill"]["sessionid"].as_u64() == Some(session.id)
        })
        .expect("a kill");
    assert_eq!(kill["kill"]["reason"], "violation", "{kill}");
    session_ends(session.id);
    let lost = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "gap"
                && v["lost_kind"] == "tty_out"
                && v["lost_records"].as_u64() > Some(0)
        })
        .unwrap_or_else(|| panic!("the flood lost no terminal record: is the ring small?"));
    eprintln!("terminal records lost to the flood: {lost}");
}

/// Exec records lost while a session holds a kill-mode grant it used: the agent cannot tell
/// whose they were, so under `fail_closed_on_loss: kill` that session dies, with a kill that
/// says why. The loss is an exec whose argv alone does not fit the (small) exec ring: a way
/// to run a command unrecorded. Any exec on the host can be the one lost (a busy host's
/// compiler lines fill a small ring too), so the test runs its own and asks only that the
/// session died for a loss.
#[test]
fn lost_exec_records_kill_the_sessions_under_kill_mode_grants() {
    if !privileged("lost_exec_records_kill_the_sessions_under_kill_mode_grants") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let rig = Rig::start_with(
        Some(r#"{"fail_closed_on_loss": "kill"}"#),
        &["--control-ring-bytes", "8192", "--drain-ms", "1"],
    );
    let grant = rig.kill_grant(&["--user", USER], "120s");
    let session = Session::start(&rig, &user, &sshd);
    assert_eq!(
        session.sudo["identity"]["grant"], grant.id,
        "{}",
        session.sudo
    );
    let status = Command::new("/bin/true")
        .arg("a".repeat(8000))
        .status()
        .unwrap();
    assert!(status.success());
    let lost = rig
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "gap" && v["lost_kind"] == "exec"
        })
        .expect("the long exec is a gap: is the exec ring small?");
    let kill = session.kill_event(&rig, &grant.id);
    assert_eq!(kill["kill"]["reason"], "exec_lost", "{kill}");
    session_ends(session.id);
    eprintln!("lost: {lost}\nkill: {kill}");
}

/// An extension that reaches the agent only after its sweep may have ended the grant (the
/// agent is stopped across the end while the grant is extended): the grant ends again at
/// its new end, and a session that used it after the extension dies then, not before.
#[test]
fn an_extension_after_the_sweep_ends_the_grant_again_at_its_new_end() {
    if !privileged("an_extension_after_the_sweep_ends_the_grant_again_at_its_new_end") {
        return;
    }
    let user = User::ensure(USER);
    let sshd = Sshd::start();
    let rig = Rig::start(None);
    let grant = rig.kill_grant(&["--user", USER], "5s");
    let signal = |sig| {
        let pid = libc::pid_t::try_from(rig.agent.pid()).unwrap();
        // SAFETY: signalling the test's own agent.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    };
    let until = |t: SystemTime| t.duration_since(SystemTime::now()).unwrap_or_default();
    std::thread::sleep(until(grant.expires).saturating_sub(Duration::from_millis(1500)));
    signal(libc::SIGSTOP);
    let extended = operator::json_lines(
        &rig.url(),
        &["grant", "extend", &grant.id, "--by", "8s", "--json"],
    );
    let new_end =
        UNIX_EPOCH + Duration::from_nanos(extended[0]["expires_at_unix_nano"].as_u64().unwrap());
    std::thread::sleep(until(grant.expires) + Duration::from_millis(500));
    let reported = rig.agent.statuses().len();
    signal(libc::SIGCONT);
    // The sweep of the old end and the extended view: whichever the agent takes first. The
    // view waiting in its stream is adopted, and said so, once it runs again; a view the
    // collector refreshed before the extension would be adopted just before it.
    let now = tests::eventually(
        Duration::from_secs(10),
        || rig.agent.statuses().len(),
        |now| *now > reported,
    );
    assert!(
        now > reported,
        "no view adopted after SIGCONT:\n{}",
        rig.agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let session = Session::start(&rig, &user, &sshd);
    assert_eq!(
        session.sudo["identity"]["grant"], grant.id,
        "covered by the extended grant: {}",
        session.sudo
    );
    std::thread::sleep(until(new_end).saturating_sub(Duration::from_millis(300)));
    assert!(
        session.pids.iter().all(|p| alive(*p)),
        "nothing dies before the new end"
    );
    all_die(&session.pids, new_end);
}
