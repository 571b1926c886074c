//! The judge stage: each exec and terminal event is judged against the grants and policy in
//! force. A covered event carries its grant; an uncovered privileged one is followed in the
//! chain by a violation, as is input pushed into a terminal read as another user, whatever
//! the policy. What must happen beyond the record (a session to kill, a grant's
//! first use to remember) leaves as an [`Action`] for the enforcer, which acts off the event
//! path.

use std::{collections::HashSet, sync::Arc};

use agent_common::event::kind;

use tracing::debug_span;

use super::{
    cache::Subject,
    rules::{Rules, View, target_of},
};
use crate::{
    capture::event::{Body, Event, Target},
    clock::WallClock,
    identity::attribute::Attributed,
};

/// Reported (grant, target) pairs and kill targets remembered before the sets are cleared;
/// clearing costs a repeat report, not a lost one.
const REMEMBERED_MAX: usize = 65_536;

/// What the enforcer is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `target` acted under `grant`: it is what the grant's end kills.
    Used {
        grant: Arc<str>,
        target: Target,
        subject: Subject,
    },
    /// A violation in kill mode.
    Kill {
        target: Target,
        reason: &'static str,
        subject: Subject,
    },
    /// A process of session `born` moved itself to session `alias` (a loginuid write):
    /// whatever ends `born` ends `alias` too.
    Alias { born: Target, alias: Target },
    /// Exec records were lost (the kernel's ring, a dropped batch, an undecodable record),
    /// so their sessions went unjudged: the policy's `fail_closed_on_loss` decides.
    ExecLost { records: u64 },
}

pub struct Judge {
    rules: Rules,
    view: Option<Arc<View>>,
    clock: WallClock,
    used: HashSet<(Arc<str>, Target)>,
    killing: HashSet<Target>,
}

impl Judge {
    #[must_use]
    pub fn new(rules: Rules, view: Option<Arc<View>>) -> Self {
        Self {
            rules,
            view,
            clock: WallClock::now(),
            used: HashSet::new(),
            killing: HashSet::new(),
        }
    }

    /// Judges from now on by `view`, the enforcer's latest.
    pub fn adopt(&mut self, view: Option<Arc<View>>) {
        self.view = view;
    }

    /// Judges one batch. Returns it with covered events marked and violations placed right
    /// after the events they are about, and what the enforcer must do.
    pub fn process(&mut self, batch: Vec<Attributed>) -> (Vec<Attributed>, Vec<Action>) {
        let _span = debug_span!("batch", events = batch.len()).entered();
        self.clock.follow_steps();
        let mut out = Vec::with_capacity(batch.len());
        let mut actions = Vec::new();
        for mut item in batch {
            if let Body::Gap {
                lost_kind: kind::EXEC,
                records,
                ..
            } = item.event.body
            {
                actions.push(Action::ExecLost { records });
            }
            if let Body::LoginuidChange {
                born_session,
                session: Some(session),
                ..
            } = item.event.body
            {
                actions.push(Action::Alias {
                    born: Target::Session(born_session),
                    alias: Target::Session(session),
                });
            }
            let violation = self.judge(&mut item, &mut actions);
            let injection = injection(&item);
            out.push(item);
            out.extend(violation);
            out.extend(injection);
        }
        (out, actions)
    }

    /// Marks `item` with the grant covering it, and returns the violation to chain after
    /// it, if it is one.
    fn judge(&mut self, item: &mut Attributed, actions: &mut Vec<Action>) -> Option<Attributed> {
        let (Some(process), Some(identity)) = (&item.event.process, &item.identity) else {
            return None;
        };
        if !matches!(item.event.body, Body::Exec { .. } | Body::Tty { .. }) {
            return None;
        }
        let ktime = item.event.ktime_ns;
        let now = self
            .view
            .as_deref()
            .map_or_else(|| self.clock.unix_ns(ktime), |v| v.at(ktime));
        let verdict = self.rules.judge(
            self.view.as_deref(),
            process,
            identity,
            item.elevated,
            &item.event.body,
            now,
        );
        let target = target_of(process, identity);
        let subject = || Subject::of(identity, item.root);
        if let Some(grant) = &verdict.grant
            && remember(&mut self.used, (Arc::clone(grant), target))
        {
            actions.push(Action::Used {
                grant: Arc::clone(grant),
                target,
                subject: subject(),
            });
        }
        item.grant = verdict.grant;
        let violation = verdict.violation?;
        if violation.kill && remember(&mut self.killing, target) {
            actions.push(Action::Kill {
                target,
                reason: "violation",
                subject: subject(),
            });
        }
        Some(follow(
            item,
            Body::Violation {
                rule: violation.rule,
                action: if violation.kill { "kill" } else { "alert" },
                detail: violation.detail,
            },
        ))
    }
}

/// The `tty_injection` alert to chain after input pushed into a terminal whose programs
/// run as another user than the pusher: how one user's process types commands into
/// another's shell (a program run by `su` or `sudo` into the shell it came from, a
/// process left behind into a root shell that took the terminal since). Pushing into a
/// terminal read only as oneself (what history tools do) is not one. Always on, whatever
/// the policy, and never a kill: the bytes are in the terminal already.
fn injection(item: &Attributed) -> Option<Attributed> {
    let Body::Tty {
        input: true,
        injected: Some(readers),
        device,
        ..
    } = &item.event.body
    else {
        return None;
    };
    let pusher = item.event.process.as_ref()?.euid;
    let other = |euid: Option<u32>| euid.is_some_and(|e| e != pusher);
    if !other(readers.session_euid) && !other(readers.foreground_euid) {
        return None;
    }
    let euid = |e: Option<u32>| e.map_or_else(|| "none".to_owned(), |e| format!("euid {e}"));
    let detail = format!(
        "input pushed into terminal {} by euid {pusher}, read by its session's leader ({}) \
         and its foreground process group's ({})",
        device.map_or_else(|| "unknown".to_owned(), |d| d.to_string()),
        euid(readers.session_euid),
        euid(readers.foreground_euid),
    );
    Some(follow(
        item,
        Body::Violation {
            rule: "tty_injection",
            action: "alert",
            detail,
        },
    ))
}

/// A record of `body` about `item`'s process, chained right after it.
fn follow(item: &Attributed, body: Body) -> Attributed {
    Attributed {
        event: Event {
            ktime_ns: item.event.ktime_ns,
            process: item.event.process.clone(),
            body,
        },
        identity: item.identity.clone(),
        root: item.root,
        grant: None,
        elevated: item.elevated,
    }
}

/// Inserts `value`; true when it was not there yet.
fn remember<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, value: T) -> bool {
    if set.len() >= REMEMBERED_MAX {
        set.clear();
    }
    set.insert(value)
}

#[cfg(test)]
mod tests {
    use proto::v1::{grant::OnExpiry, policy::Mode};

    use super::*;
    use crate::{
        capture::event::Event,
        enforce::rules::tests::{HOST, SESSION, alice, grant, sudo, view},
        identity::proctable::SessionRoot,
    };

    fn item(euid: u32, ktime_ns: u64) -> Attributed {
        let (process, body) = sudo(euid);
        Attributed {
            event: Event {
                ktime_ns,
                process: Some(process),
                body,
            },
            identity: Some(Arc::new(alice())),
            root: Some(ROOT),
            grant: None,
            elevated: false,
        }
    }

    const ROOT: SessionRoot = SessionRoot {
        pid: 40,
        start_ns: 7_000,
    };

    /// Whose the actions say `item`'s target is.
    fn subject() -> Subject {
        Subject::of(&alice(), Some(ROOT))
    }

    fn judge(mode: Mode, grants: Vec<proto::v1::Grant>) -> Judge {
        // Grants from the distant past to the distant future, so the wall clock is inside.
        let grants = grants
            .into_iter()
            .map(|g| proto::v1::Grant {
                not_before_unix_nano: 0,
                expires_at_unix_nano: u64::MAX / 2,
                ..g
            })
            .collect();
        let rules = Rules {
            host: HOST.into(),
            fail_closed: None,
        };
        Judge::new(
            rules,
            Some(Arc::new(View::adopt(None, view(grants, mode), 0))),
        )
    }

    #[test]
    fn a_violation_follows_its_event_and_kill_mode_asks_for_one_kill() {
        let mut j = judge(Mode::Kill, Vec::new());
        let now = crate::clock::boot_ns();
        let (out, actions) = j.process(vec![item(0, now), item(1000, now), item(0, now)]);
        let kinds: Vec<&str> = out
            .iter()
            .map(|a| match &a.event.body {
                Body::Violation { action, .. } => action,
                _ => "event",
            })
            .collect();
        assert_eq!(kinds, ["event", "kill", "event", "event", "kill"]);
        assert_eq!(
            actions,
            [Action::Kill {
                target: Target::Session(SESSION),
                reason: "violation",
                subject: subject(),
            }],
            "one kill per target"
        );
    }

    /// Input pushed into a terminal read as someone else is followed by an alert naming
    /// them, whatever the policy, and never killed; pushed into one read only as oneself, or
    /// whose leaders are gone, it is not.
    #[test]
    fn input_pushed_into_a_terminal_read_as_another_user_is_alerted() {
        use crate::capture::event::{Device, Readers};
        let pushed = |pusher: u32, session: Option<u32>, foreground: Option<u32>| {
            let mut pushed = item(pusher, 0);
            pushed.event.body = Body::Tty {
                input: true,
                device: Some(Device {
                    major: 136,
                    minor: 3,
                }),
                fd: 0,
                offset: 0,
                data: bytes::Bytes::from_static(b"id\n"),
                redacted_bytes: 0,
                injected: Some(Readers {
                    session_euid: session,
                    foreground_euid: foreground,
                }),
                writes: 3,
                span_ns: 0,
                write_bytes: Vec::new(),
                write_gap_ns: Vec::new(),
            };
            pushed
        };
        let alerts = |item: Attributed| {
            let mut j = judge(Mode::Kill, Vec::new());
            let (out, actions) = j.process(vec![item]);
            assert!(actions.is_empty(), "never a kill: {actions:?}");
            out.into_iter()
                .filter_map(|a| match a.event.body {
                    Body::Violation {
                        rule: "tty_injection",
                        action,
                        detail,
                    } => Some((action, detail)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            alerts(pushed(65_534, Some(0), Some(65_534))),
            [(
                "alert",
                "input pushed into terminal 136:3 by euid 65534, read by its session's leader \
                 (euid 0) and its foreground process group's (euid 65534)"
                    .to_owned()
            )]
        );
        assert_eq!(alerts(pushed(1000, Some(1000), Some(0))).len(), 1);
        assert_eq!(alerts(pushed(1000, None, Some(0))).len(), 1);
        for quiet in [
            pushed(1000, Some(1000), Some(1000)),
            pushed(1000, None, None),
            pushed(0, Some(0), None),
        ] {
            assert_eq!(alerts(quiet), []);
        }
        // Typed through the master, the same bytes are no push.
        let mut typed = pushed(65_534, Some(0), Some(0));
        if let Body::Tty { injected, .. } = &mut typed.event.body {
            *injected = None;
        }
        assert_eq!(alerts(typed), []);
    }

    #[test]
    fn lost_exec_records_are_reported_and_other_losses_are_not() {
        let mut j = judge(Mode::Kill, Vec::new());
        let gap = |lost_kind| Attributed {
            event: Event {
                ktime_ns: 0,
                process: None,
                body: Body::Gap {
                    source: crate::capture::event::GapSource::Kernel,
                    lost_kind,
                    records: 3,
                    bytes: 0,
                },
            },
            identity: None,
            root: None,
            grant: None,
            elevated: false,
        };
        let (out, actions) = j.process(vec![gap(kind::TTY_OUT), gap(kind::EXEC)]);
        assert_eq!(out.len(), 2, "the gaps stay in the chain");
        assert_eq!(actions, [Action::ExecLost { records: 3 }]);
    }

    #[test]
    fn a_covered_event_carries_its_grant_and_reports_its_first_use() {
        let mut j = judge(Mode::Alert, vec![grant("g-1", &[], OnExpiry::Kill)]);
        let now = crate::clock::boot_ns();
        let (out, actions) = j.process(vec![item(0, now), item(0, now)]);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|a| a.grant.as_deref() == Some("g-1")));
        assert_eq!(
            actions,
            [Action::Used {
                grant: "g-1".into(),
                target: Target::Session(SESSION),
                subject: subject(),
            }]
        );
    }
}
