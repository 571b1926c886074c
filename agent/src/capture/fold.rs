//! Failed PATH lookups, folded into the exec they led to. A shell runs `ls` by trying
//! `execve` in each `PATH` directory in turn: every miss is a failed exec (`ENOENT`) with the
//! same argv, and on this machine kind they were over half of all exec records. A miss is
//! held per process and, when the same process next execs with the same argv, becomes a path
//! in that exec's `tried`. Nothing is dropped: misses that no such exec follows (a command
//! not found anywhere, an exec with other arguments) are passed on as they are, before the
//! process's next other exec, before its exit, or once held for `HOLD`. Other failures
//! (`EACCES`, `EPERM`) are attempts in their own right and are never held.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;

use super::event::{Body, Event};

/// The longest a miss is held: a process that neither execs again nor exits in this time
/// has its misses passed on as they are.
pub const HOLD: Duration = Duration::from_secs(1);
/// Misses held for one process; past it the oldest is passed on (a `PATH` is rarely longer).
const MISSES_MAX: usize = 64;
/// Processes holding misses at once; past it a new miss is passed on at once.
const PROCESSES_MAX: usize = 4096;

struct Held {
    since: Instant,
    misses: Vec<Event>,
}

#[derive(Default)]
pub struct Fold {
    held: HashMap<u32, Held>,
}

/// `event` with argv strings of its own: a held miss's views would keep its whole batch's
/// buffer (up to 4 MiB) alive for as long as it is held.
fn unshared(mut event: Event) -> Event {
    if let Body::Exec { argv, .. } = &mut event.body {
        for arg in argv {
            *arg = Bytes::copy_from_slice(arg);
        }
    }
    event
}

fn is_miss(event: &Event) -> bool {
    matches!(event.body, Body::Exec { result, .. } if result == -libc::ENOENT)
}

impl Fold {
    /// Folds a batch's misses into the execs they led to; returns what is to be passed on,
    /// in order: first whatever was held past `HOLD` at `now`, then the batch.
    pub fn process(&mut self, events: Vec<Event>, now: Instant) -> Vec<Event> {
        let mut out = self.expired(now);
        out.reserve(events.len());
        for event in events {
            let Some(tgid) = event.process.as_ref().map(|p| p.tgid) else {
                out.push(event);
                continue;
            };
            if is_miss(&event) {
                self.hold(tgid, event, now, &mut out);
                continue;
            }
            match event.body {
                Body::Exec { .. } => {
                    let exec = self.fold_into(tgid, event, &mut out);
                    out.push(exec);
                }
                Body::Exit { .. } => {
                    if let Some(held) = self.held.remove(&tgid) {
                        out.extend(held.misses);
                    }
                    out.push(event);
                }
                _ => out.push(event),
            }
        }
        out
    }

    /// Whether anything is held: the stage then wakes by `HOLD` even without batches.
    #[must_use]
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Everything held, in the order it came, as at a stop.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut held: Vec<Held> = self.held.drain().map(|(_, h)| h).collect();
        held.sort_by_key(|h| h.since);
        held.into_iter().flat_map(|h| h.misses).collect()
    }

    /// What has been held for `HOLD` or longer at `now`, oldest first.
    pub fn expired(&mut self, now: Instant) -> Vec<Event> {
        if self.held.is_empty() {
            return Vec::new();
        }
        let mut old: Vec<(Instant, u32)> = self
            .held
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= HOLD)
            .map(|(tgid, h)| (h.since, *tgid))
            .collect();
        old.sort_unstable();
        old.into_iter()
            .filter_map(|(_, tgid)| self.held.remove(&tgid))
            .flat_map(|h| h.misses)
            .collect()
    }

    fn hold(&mut self, tgid: u32, miss: Event, now: Instant, out: &mut Vec<Event>) {
        if !self.held.contains_key(&tgid) && self.held.len() >= PROCESSES_MAX {
            out.push(miss);
            return;
        }
        let held = self.held.entry(tgid).or_insert_with(|| Held {
            since: now,
            misses: Vec::new(),
        });
        if held.misses.len() >= MISSES_MAX {
            out.push(held.misses.remove(0));
        }
        held.misses.push(unshared(miss));
    }

    /// `exec` with the paths of its process's held misses of the same argv in `tried`;
    /// misses of other argv go to `out` first.
    fn fold_into(&mut self, tgid: u32, mut exec: Event, out: &mut Vec<Event>) -> Event {
        let Some(held) = self.held.remove(&tgid) else {
            return exec;
        };
        let Body::Exec { argv, tried, .. } = &mut exec.body else {
            unreachable!("fold_into is given execs only");
        };
        for miss in held.misses {
            match miss.body {
                Body::Exec {
                    filename,
                    argv: ref miss_argv,
                    ..
                } if miss_argv == argv => tried.push(filename),
                _ => out.push(miss),
            }
        }
        exec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::event::Process;
    use bytes::Bytes;

    fn process(tgid: u32) -> Process {
        Process {
            pid: tgid,
            tgid,
            ppid: 1,
            uid: 0,
            euid: 0,
            gid: 0,
            loginuid: None,
            sessionid: None,
            cgroup_id: 1,
            tty: None,
            comm: "sh".into(),
        }
    }

    fn exec(tgid: u32, filename: &str, argv: &[&str], result: i32) -> Event {
        Event {
            ktime_ns: 0,
            process: Some(process(tgid)),
            body: Body::Exec {
                filename: filename.into(),
                filename_truncated: false,
                argv: argv
                    .iter()
                    .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                    .collect(),
                argv_truncated: false,
                argv_unreadable: false,
                result,
                tried: Vec::new(),
                cwd: None,
                executable: None,
                interpreter: None,
                image: None,
            },
        }
    }

    fn exit(tgid: u32) -> Event {
        Event {
            ktime_ns: 0,
            process: Some(process(tgid)),
            body: Body::Exit {
                exit_code: 127 << 8,
                filename: None,
            },
        }
    }

    fn tried(event: &Event) -> Vec<&str> {
        match &event.body {
            Body::Exec { tried, .. } => tried.iter().map(String::as_str).collect(),
            _ => panic!("not an exec"),
        }
    }

    const ENOENT: i32 = -libc::ENOENT;

    #[test]
    fn a_path_search_is_one_exec_naming_the_paths_tried() {
        let mut fold = Fold::default();
        let now = Instant::now();
        let mut out = fold.process(
            vec![
                exec(7, "/usr/local/bin/ls", &["ls", "-l"], ENOENT),
                exec(8, "/bin/true", &["true"], 0),
            ],
            now,
        );
        out.extend(fold.process(
            vec![
                exec(7, "/usr/sbin/ls", &["ls", "-l"], ENOENT),
                exec(7, "/usr/bin/ls", &["ls", "-l"], 0),
            ],
            now,
        ));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(tried(&out[1]), ["/usr/local/bin/ls", "/usr/sbin/ls"]);
        assert!(!fold.holding());
    }

    #[test]
    fn misses_nothing_follows_are_passed_on_whole() {
        let mut fold = Fold::default();
        let now = Instant::now();
        // Not found anywhere: the process exits, and its misses come out before its exit.
        let out = fold.process(
            vec![
                exec(7, "/a/nosuch", &["nosuch"], ENOENT),
                exec(7, "/b/nosuch", &["nosuch"], ENOENT),
                exit(7),
            ],
            now,
        );
        assert_eq!(out.len(), 3);
        assert!(matches!(out[2].body, Body::Exit { .. }));
        // Other arguments are another attempt; EACCES is never held.
        let out = fold.process(
            vec![
                exec(9, "/a/x", &["x", "1"], ENOENT),
                exec(9, "/b/y", &["y"], -libc::EACCES),
            ],
            now,
        );
        assert_eq!(out.len(), 2);
        assert!(tried(&out[1]).is_empty());
        // Held past HOLD: passed on with the next batch, or by the stage's timer.
        assert!(
            fold.process(vec![exec(10, "/a/z", &["z"], ENOENT)], now)
                .is_empty()
        );
        assert!(fold.expired(now + HOLD / 2).is_empty());
        assert_eq!(fold.process(Vec::new(), now + HOLD).len(), 1);
        assert!(
            fold.process(vec![exec(11, "/a/w", &["w"], ENOENT)], now)
                .is_empty()
        );
        assert_eq!(fold.drain().len(), 1);
    }

    #[test]
    fn what_is_held_is_bounded() {
        let mut fold = Fold::default();
        let now = Instant::now();
        let misses = (0..MISSES_MAX + 3)
            .map(|n| exec(7, &format!("/d{n}/x"), &["x"], ENOENT))
            .collect();
        assert_eq!(fold.process(misses, now).len(), 3);
        let others = (0..PROCESSES_MAX as u32 + 5)
            .map(|tgid| exec(100 + tgid, "/a/x", &["x"], ENOENT))
            .collect();
        assert_eq!(fold.process(others, now).len(), 6);
        assert_eq!(fold.held.len(), PROCESSES_MAX);
    }
}
