//! The process table, kept from fork/exec/exit and seeded from /proc at start so processes
//! older than the agent are known too. It knows each process's image, parent, audit session
//! and start time, and from them the root of every audit session: the process that began
//! it (for a login, the one `pam_loginuid` ran in), so all activity of one login can be
//! grouped and replayed.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use crate::capture::event::{Body, Event, audit_id};

#[derive(Clone, Debug, Default)]
struct Entry {
    ppid: u32,
    image: Option<String>,
    sessionid: Option<u32>,
    loginuid: Option<u32>,
    /// `CLOCK_BOOTTIME` nanoseconds.
    start_ns: u64,
    /// It is, or descends from, a setuid-root exec in a login session.
    elevated: bool,
}

/// The process an audit session began in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRoot {
    pub pid: u32,
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub start_ns: u64,
}

/// Sessions remembered before the cache is cleared; a cleared root is found again by
/// walking the table while its processes live.
const ROOTS_MAX: usize = 65_536;
/// Ancestors walked at most when looking for a session's root.
const MAX_DEPTH: usize = 256;

#[derive(Default)]
pub struct ProcessTable {
    procs: HashMap<u32, Entry>,
    roots: HashMap<u32, SessionRoot>,
    /// Audit sessions made by a loginuid write inside a login, already reported.
    moved_to: HashSet<u32>,
    /// `/proc`'s clock tick in nanoseconds, for a table seeded from `/proc`: a session
    /// root's start is read there too (`stable_start`).
    proc_tick_ns: Option<u64>,
}

impl ProcessTable {
    /// Every process visible in /proc now.
    #[must_use]
    pub fn from_proc() -> Self {
        let ticks_ns = 1_000_000_000 / clock_ticks_per_second();
        let mut procs = HashMap::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let Some((parent, start_ticks)) = read_stat(&dir) else {
                continue;
            };
            let audit = |file| {
                fs::read_to_string(dir.join(file))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .and_then(audit_id)
            };
            let (sessionid, loginuid) = (audit("sessionid"), audit("loginuid"));
            let image = fs::read_link(dir.join("exe"))
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
            // Seen before its exec was: a setuid-root image is told by its real and
            // effective uids now.
            let elevated = sessionid.is_some()
                && fs::read_to_string(dir.join("status"))
                    .ok()
                    .as_deref()
                    .and_then(parse_uids)
                    .is_some_and(|(real, effective)| effective == 0 && real != 0);
            procs.insert(
                pid,
                Entry {
                    ppid: parent,
                    image,
                    sessionid,
                    loginuid,
                    start_ns: start_ticks * ticks_ns,
                    elevated,
                },
            );
        }
        // What such a process started before the agent did is elevated too.
        let inherited: Vec<u32> = procs
            .iter()
            .filter(|(pid, e)| !e.elevated && elevated_ancestor(&procs, **pid))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in inherited {
            if let Some(entry) = procs.get_mut(&pid) {
                entry.elevated = true;
            }
        }
        Self {
            procs,
            roots: HashMap::new(),
            moved_to: HashSet::new(),
            proc_tick_ns: Some(ticks_ns),
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Updates the table from `event`, fills in what the table knows that the kernel record
    /// does not carry (the image of an exiting process), and returns the root of the event's
    /// audit session, if it has one.
    pub fn observe(&mut self, event: &mut Event) -> Option<SessionRoot> {
        let process = event.process.as_ref()?;
        let (tgid, ppid, sessionid) = (process.tgid, process.ppid, process.sessionid);
        let loginuid = process.loginuid;
        match &mut event.body {
            Body::Fork => {
                // The record carries the forking parent's credentials, so they are the
                // parent's news as much as the child's.
                let parent = self.procs.entry(ppid).or_default();
                parent.sessionid = sessionid;
                parent.loginuid = loginuid;
                let (image, elevated) = (parent.image.clone(), parent.elevated);
                self.procs.insert(
                    tgid,
                    Entry {
                        ppid,
                        image,
                        sessionid,
                        loginuid,
                        start_ns: event.ktime_ns,
                        elevated,
                    },
                );
            }
            Body::Exec {
                filename,
                result: 0,
                ..
            } => {
                let entry = self.procs.entry(tgid).or_insert_with(|| Entry {
                    ppid,
                    ..Entry::default()
                });
                entry.image = Some(filename.clone());
                entry.sessionid = sessionid;
                entry.loginuid = loginuid;
                // The exec record carries the credentials the new image runs with: a real
                // user gaining euid 0 is a setuid-root program (sudo, su, pkexec). It and
                // everything it starts act as root for the human behind the session,
                // whatever uid they later set.
                entry.elevated |= sessionid.is_some() && process.euid == 0 && process.uid != 0;
            }
            Body::Exit { filename, .. } => {
                let root = sessionid.and_then(|s| self.root_of(tgid, s));
                *filename = self.procs.remove(&tgid).and_then(|e| e.image);
                return root;
            }
            _ => {
                self.procs
                    .entry(tgid)
                    .or_insert_with(|| Entry {
                        ppid,
                        ..Entry::default()
                    })
                    .sessionid = sessionid;
            }
        }
        sessionid.and_then(|s| self.root_of(tgid, s))
    }

    /// Keeps a process in the login session it was born in. A process whose record names
    /// another audit session than the one the table knows it by has written its loginuid:
    /// the record is given back the session and loginuid it was born with (so it stays
    /// attributed to, and enforced as, that session), and the change is returned, once per
    /// new session. A process that gains its first session (`pam_loginuid` at a login)
    /// changes nothing here.
    pub fn keep_birth_session(&mut self, event: &mut Event) -> Option<Body> {
        let process = event.process.as_mut()?;
        // A fork record carries the forking parent's credentials.
        let subject = if matches!(event.body, Body::Fork) {
            process.ppid
        } else {
            process.tgid
        };
        let entry = self.procs.get(&subject)?;
        let born = entry.sessionid?;
        if process.sessionid == Some(born) {
            return None;
        }
        let (born_loginuid, session) = (entry.loginuid, process.sessionid);
        let change = Body::LoginuidChange {
            born_loginuid,
            born_session: born,
            loginuid: process.loginuid,
            session,
        };
        process.sessionid = Some(born);
        process.loginuid = born_loginuid;
        let Some(new) = session else {
            return Some(change);
        };
        if self.moved_to.len() >= ROOTS_MAX {
            self.moved_to.clear();
        }
        self.moved_to.insert(new).then_some(change)
    }

    /// Whether process `tgid` is, or descends from, a setuid-root exec in a login session.
    #[must_use]
    pub fn elevated(&self, tgid: u32) -> bool {
        self.procs.get(&tgid).is_some_and(|e| e.elevated)
    }

    /// The session's root: from `tgid`, the furthest ancestor still in session `s`. `None`
    /// when the session's root is not known yet and the table does not know `tgid` either:
    /// the exit of a process that forked before the agent attached and was gone before the
    /// table was seeded. A root found from such a process would be that process, start
    /// unknown, and kept for the whole session.
    fn root_of(&mut self, tgid: u32, s: u32) -> Option<SessionRoot> {
        if let Some(root) = self.roots.get(&s) {
            return Some(*root);
        }
        if !self.procs.contains_key(&tgid) {
            return None;
        }
        let mut pid = tgid;
        for _ in 0..MAX_DEPTH {
            let Some(entry) = self.procs.get(&pid) else {
                break;
            };
            let parent_in_session = entry.ppid != pid
                && self
                    .procs
                    .get(&entry.ppid)
                    .is_some_and(|p| p.sessionid == Some(s));
            if !parent_in_session {
                break;
            }
            pid = entry.ppid;
        }
        let root = SessionRoot {
            pid,
            start_ns: self.stable_start(pid, self.procs.get(&pid).map_or(0, |e| e.start_ns)),
        };
        if self.roots.len() >= ROOTS_MAX {
            self.roots.clear();
        }
        self.roots.insert(s, root);
        Some(root)
    }

    /// A session root's start as `/proc` shows it, to the clock tick, as the seed reads
    /// every process that ran before the agent: then every run of the agent gives a login
    /// the same root start, and so the same session key, whether it saw the root's fork or
    /// found the root already running. The fork record's own time is a few microseconds
    /// after the kernel's start, and known only to a run that saw the fork. `start_ns` is
    /// kept when the process is gone, or is another by now (a reused pid: its start is not
    /// within two ticks before `start_ns`), or is not known at all.
    fn stable_start(&self, pid: u32, start_ns: u64) -> u64 {
        let Some(tick_ns) = self.proc_tick_ns.filter(|_| start_ns > 0) else {
            return start_ns;
        };
        let Some((_, ticks)) = read_stat(Path::new(&format!("/proc/{pid}"))) else {
            return start_ns;
        };
        let kernel = ticks.saturating_mul(tick_ns);
        if kernel <= start_ns && start_ns - kernel < 2 * tick_ns {
            kernel
        } else {
            start_ns
        }
    }
}

/// Whether an ancestor of `pid` in its session is elevated.
fn elevated_ancestor(procs: &HashMap<u32, Entry>, pid: u32) -> bool {
    let Some(session) = procs.get(&pid).and_then(|e| e.sessionid) else {
        return false;
    };
    let mut at = pid;
    for _ in 0..MAX_DEPTH {
        let Some(parent) = procs
            .get(&at)
            .map(|e| e.ppid)
            .filter(|p| *p != at)
            .and_then(|p| Some((p, procs.get(&p)?)))
        else {
            return false;
        };
        if parent.1.sessionid != Some(session) {
            return false;
        }
        if parent.1.elevated {
            return true;
        }
        at = parent.0;
    }
    false
}

/// `(real, effective)` uids from `/proc/PID/status`.
fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(str::parse::<u32>);
    Some((ids.next()?.ok()?, ids.next()?.ok()?))
}

/// The parent and start (in clock ticks) of the process whose `/proc` directory is `dir`.
fn read_stat(dir: &Path) -> Option<(u32, u64)> {
    parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)
}

/// `(ppid, starttime in clock ticks)` from `/proc/PID/stat`; the command name may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... starttime(22), so indices 1 and 19 here.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::Process;

    fn event(tgid: u32, ppid: u32, sessionid: Option<u32>, ktime_ns: u64, body: Body) -> Event {
        let process = Process {
            pid: tgid,
            tgid,
            ppid,
            uid: 0,
            euid: 0,
            gid: 0,
            loginuid: None,
            sessionid,
            cgroup_id: 0,
            tty: None,
            comm: String::new(),
        };
        Event {
            ktime_ns,
            process: Some(process),
            body,
        }
    }

    fn exec(filename: &str) -> Body {
        Body::Exec {
            filename: filename.into(),
            filename_truncated: false,
            argv: vec![],
            argv_truncated: false,
            argv_unreadable: false,
            result: 0,
            tried: Vec::new(),
            cwd: None,
            executable: None,
            interpreter: None,
            image: None,
        }
    }

    #[test]
    fn seeds_from_proc_including_this_process() {
        let table = ProcessTable::from_proc();
        let me = &table.procs[&std::process::id()];
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(me.start_ns > 0 && me.image.is_some());
    }

    /// The exit of a process the table never knew (forked before the agent attached, gone
    /// before the seed) says nothing of its session's root: it gets none, and the session's
    /// next process still roots at the login's first one. Restarting an agent beside a
    /// login whose shell ran `sleep` in a loop once gave that login the sleep as its root.
    #[test]
    fn an_unknown_process_exiting_does_not_root_its_session() {
        let mut table = ProcessTable::default();
        table.observe(&mut event(200, 100, None, 1_000, Body::Fork));
        let exit = Body::Exit {
            exit_code: 0,
            filename: None,
        };
        assert_eq!(
            table.observe(&mut event(900, 300, Some(7), 5_000, exit)),
            None
        );
        assert_eq!(
            table.observe(&mut event(300, 200, Some(7), 6_000, Body::Fork)),
            Some(SessionRoot {
                pid: 200,
                start_ns: 1_000
            })
        );
    }

    /// A root's start is the kernel's, to `/proc`'s tick, when the fork's time is within
    /// two ticks after it (what a run that saw the fork has): a run that found the root
    /// already running reads the same. Anything else is another process, and kept as given;
    /// so is everything in a table not seeded from `/proc`.
    #[test]
    fn a_roots_start_is_the_kernels_to_the_tick() {
        let table = ProcessTable::from_proc();
        let me = std::process::id();
        let (kernel, tick) = (table.procs[&me].start_ns, table.proc_tick_ns.unwrap());
        assert_eq!(
            table.stable_start(me, kernel + 7_000),
            kernel,
            "a fork's time"
        );
        assert_eq!(table.stable_start(me, kernel), kernel, "the seed's own");
        assert_eq!(table.stable_start(me, kernel + 2 * tick), kernel + 2 * tick);
        assert_eq!(
            table.stable_start(me, kernel - 1),
            kernel - 1,
            "before it started"
        );
        assert_eq!(table.stable_start(me, 0), 0, "unknown stays unknown");
        assert_eq!(
            ProcessTable::default().stable_start(me, kernel + 7_000),
            kernel + 7_000
        );
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987 1 2";
        assert_eq!(parse_stat(stat), Some((7, 987)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_setuid_root_exec_elevates_what_it_starts_in_its_session() {
        let mut table = ProcessTable::default();
        let as_user = |mut e: Event, uid, euid| {
            let p = e.process.as_mut().unwrap();
            (p.uid, p.euid) = (uid, euid);
            e
        };
        // alice's shell (uid 1000) forks and execs sudo: euid 0, uid 1000.
        table.observe(&mut as_user(
            event(10, 1, Some(7), 0, Body::Fork),
            1000,
            1000,
        ));
        table.observe(&mut as_user(
            event(20, 10, Some(7), 0, Body::Fork),
            1000,
            1000,
        ));
        assert!(!table.elevated(20));
        table.observe(&mut as_user(
            event(20, 10, Some(7), 0, exec("/usr/bin/sudo")),
            1000,
            0,
        ));
        assert!(table.elevated(20), "sudo itself");
        // sudo -i: a root shell (uid 0) and what it runs.
        table.observe(&mut event(30, 20, Some(7), 0, Body::Fork));
        table.observe(&mut event(30, 20, Some(7), 0, exec("/bin/bash")));
        table.observe(&mut event(40, 30, Some(7), 0, Body::Fork));
        table.observe(&mut event(40, 30, Some(7), 0, exec("/usr/bin/id")));
        assert!(
            table.elevated(30) && table.elevated(40),
            "the root shell and its child"
        );
        assert!(!table.elevated(10), "the user's own shell is not");
        // Root's own work outside any login session (a daemon running setuid) is not.
        table.observe(&mut as_user(
            event(60, 1, None, 0, exec("/usr/bin/passwd")),
            1000,
            0,
        ));
        assert!(!table.elevated(60));
    }

    #[test]
    fn a_process_keeps_the_session_it_was_born_in() {
        let mut table = ProcessTable::default();
        let with = |mut e: Event, loginuid| {
            e.process.as_mut().unwrap().loginuid = loginuid;
            e
        };
        table.observe(&mut with(event(10, 1, Some(7), 0, Body::Fork), Some(1000)));
        // Its first session, from pam_loginuid at a login, is no change.
        let mut login = with(event(5, 1, None, 0, Body::Fork), None);
        table.observe(&mut login);
        let mut first = with(event(5, 1, Some(8), 0, exec("/bin/sh")), Some(1000));
        assert_eq!(table.keep_birth_session(&mut first), None);
        // A loginuid write: session 7 becomes 9, loginuid 1000 becomes 4242.
        let mut moved = with(event(10, 1, Some(9), 0, exec("/bin/sleep")), Some(4242));
        assert_eq!(
            table.keep_birth_session(&mut moved),
            Some(Body::LoginuidChange {
                born_loginuid: Some(1000),
                born_session: 7,
                loginuid: Some(4242),
                session: Some(9),
            })
        );
        let p = moved.process.as_ref().unwrap();
        assert_eq!((p.sessionid, p.loginuid), (Some(7), Some(1000)));
        table.observe(&mut moved);
        // Reported once; its children are born in session 7 too.
        let mut again = with(event(10, 1, Some(9), 0, exec("/bin/true")), Some(4242));
        assert_eq!(table.keep_birth_session(&mut again), None);
        let mut child = with(event(11, 10, Some(9), 0, Body::Fork), Some(4242));
        assert_eq!(table.keep_birth_session(&mut child), None);
        assert_eq!(child.process.unwrap().sessionid, Some(7));
    }

    #[test]
    fn fork_exec_exit_track_the_image() {
        let mut table = ProcessTable::default();
        table.procs.insert(
            1,
            Entry {
                image: Some("/sbin/init".into()),
                ..Entry::default()
            },
        );
        table.observe(&mut event(50, 1, None, 0, Body::Fork));
        table.observe(&mut event(50, 1, None, 0, exec("/bin/sleep")));
        let mut exit = event(
            50,
            1,
            None,
            0,
            Body::Exit {
                exit_code: 0,
                filename: None,
            },
        );
        table.observe(&mut exit);
        assert_eq!(
            exit.body,
            Body::Exit {
                exit_code: 0,
                filename: Some("/bin/sleep".into())
            }
        );
        assert!(!table.procs.contains_key(&50));
    }

    /// sshd (no session) forks P; P sets the loginuid (session 7) and forks the shell, which
    /// runs a command: the whole login's root is P, from P's start.
    #[test]
    fn a_login_session_roots_at_the_process_that_began_it() {
        let mut table = ProcessTable::default();
        table.procs.insert(
            100,
            Entry {
                image: Some("/usr/sbin/sshd".into()),
                ..Entry::default()
            },
        );
        assert_eq!(
            table.observe(&mut event(200, 100, None, 1_000, Body::Fork)),
            None
        );
        let shell = table.observe(&mut event(300, 200, Some(7), 2_000, Body::Fork));
        let root = SessionRoot {
            pid: 200,
            start_ns: 1_000,
        };
        assert_eq!(shell, Some(root));
        assert_eq!(
            table.observe(&mut event(300, 200, Some(7), 3_000, exec("/bin/sh"))),
            Some(root)
        );
        assert_eq!(
            table.observe(&mut event(400, 300, Some(7), 4_000, Body::Fork)),
            Some(root)
        );
        assert_eq!(
            table.observe(&mut event(400, 300, Some(7), 5_000, exec("/usr/bin/id"))),
            Some(root)
        );
        let other = table.observe(&mut event(500, 100, Some(8), 6_000, exec("/bin/true")));
        assert_eq!(
            other,
            Some(SessionRoot {
                pid: 500,
                start_ns: 0
            })
        );
    }
}
