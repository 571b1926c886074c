//! The rules, pure: an event, who is behind it, and the grants and policy in force give a
//! verdict. No file, map or process is touched here; the judge stage turns verdicts into
//! events and actions.

use std::{sync::Arc, time::Duration};

use proto::{
    grant::{covers, end},
    identity::selects,
    v1::{Grant, GrantView, Policy, identity::Kind, policy::Mode},
};

use crate::{
    capture::event::{Body, Process, Target},
    identity::Identity,
};

/// Longest command line a violation repeats.
const DETAIL_MAX: usize = 256;

/// Staleness rule: with no fresh grant view, privileged activity is judged as if no grant
/// covered it.
#[derive(Clone, Copy, Debug)]
pub struct FailClosed {
    pub after: Duration,
    pub kill: bool,
}

/// The grants and policy the agent holds: the collector's last view, with the grant ids
/// shared so a covered event does not copy its grant's id.
///
/// Grants are judged on the collector's timeline, never on this host's wall clock: an
/// instant is the view's issue time plus the `CLOCK_BOOTTIME` elapsed since the view
/// arrived ([`View::at`]). So a grant's remaining time is what the collector said it was,
/// counted down by a clock no one can step, and a revocation takes effect on receipt.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub grants: Vec<(Arc<str>, Grant)>,
    pub policy: Option<Policy>,
    /// When the collector made it, by the collector's clock.
    pub issued_unix_nano: u64,
    /// The collector's time minus this host's `CLOCK_BOOTTIME`: the timeline grants are
    /// judged on.
    collector_minus_boot: i128,
}

impl View {
    /// Adopts `new`, received at boot-clock instant `received_boot_ns`. A grant that was in
    /// `old` and is missing from `new`, before its end, is taken as revoked when `new` was
    /// issued: losing sight of a grant must not extend it.
    #[must_use]
    pub fn adopt(old: Option<&Self>, mut new: GrantView, received_boot_ns: u64) -> Self {
        let now = new.issued_unix_nano;
        if let Some(old) = old {
            for (id, grant) in &old.grants {
                if end(grant) > now && !new.grants.iter().any(|g| *g.id == **id) {
                    new.grants.push(Grant {
                        revoked_unix_nano: now,
                        ..grant.clone()
                    });
                }
            }
        }
        // A view that took longer to arrive than the last one, or that a collector's clock
        // stepped back made, would put the collector's time behind where the last one had
        // it, and give every grant the difference: a view held back in transit must extend
        // nothing. So the timeline never goes back.
        let offset = i128::from(now) - i128::from(received_boot_ns);
        Self {
            grants: new
                .grants
                .into_iter()
                .map(|g| (Arc::from(g.id.as_str()), g))
                .collect(),
            policy: new.policy,
            issued_unix_nano: new.issued_unix_nano,
            collector_minus_boot: old.map_or(offset, |old| old.collector_minus_boot.max(offset)),
        }
    }

    /// The collector's time at boot-clock instant `boot_ns`.
    #[must_use]
    pub fn at(&self, boot_ns: u64) -> u64 {
        let at = i128::from(boot_ns) + self.collector_minus_boot;
        u64::try_from(at.max(0)).unwrap_or(u64::MAX)
    }

    /// The boot-clock instant at which the collector's time reaches `unix_ns` (0, at once,
    /// if it already has).
    #[must_use]
    pub fn boot_at(&self, unix_ns: u64) -> u64 {
        let boot = i128::from(unix_ns) - self.collector_minus_boot;
        u64::try_from(boot.max(0)).unwrap_or(u64::MAX)
    }

    /// The form it is cached in.
    #[must_use]
    pub fn to_proto(&self) -> GrantView {
        GrantView {
            grants: self.grants.iter().map(|(_, g)| g.clone()).collect(),
            policy: self.policy.clone(),
            issued_unix_nano: self.issued_unix_nano,
        }
    }
}

/// Activity that needs a grant and has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// `root_exec`, `guarded_identity`, `stale_grants`.
    pub rule: &'static str,
    pub kill: bool,
    pub detail: String,
}

/// What the rules say of one event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The grant covering it.
    pub grant: Option<Arc<str>>,
    pub violation: Option<Violation>,
}

/// The rules of this host.
#[derive(Clone, Debug)]
pub struct Rules {
    pub host: String,
    pub fail_closed: Option<FailClosed>,
}

impl Rules {
    /// Judges an event of `process`, attributed to `identity`, at `now` on the view's
    /// timeline ([`View::at`]). Only execs and terminal activity are judged.
    #[must_use]
    pub fn judge(
        &self,
        view: Option<&View>,
        process: &Process,
        identity: &Identity,
        elevated: bool,
        body: &Body,
        now: u64,
    ) -> Verdict {
        let exec = matches!(body, Body::Exec { .. });
        if !exec && !matches!(body, Body::Tty { .. }) {
            return Verdict::default();
        }
        let stale = self.stale(view, now);
        if stale.is_none()
            && let Some((id, _)) = view.and_then(|v| {
                v.grants
                    .iter()
                    .find(|(_, g)| covers(g, identity.kind, &identity.name, &self.host, now))
            })
        {
            return Verdict {
                grant: Some(Arc::clone(id)),
                violation: None,
            };
        }
        if identity.grant.is_some() {
            // A registration vouches for the session.
            return Verdict::default();
        }
        let policy = view.and_then(|v| v.policy.as_ref());
        let needs = |p: &Policy| {
            let root_exec = p.root_exec && exec && human_root(process, identity, elevated);
            let guarded = identity.kind != Kind::Human
                && p.guarded
                    .iter()
                    .any(|s| selects(s, identity.kind, &identity.name));
            (root_exec, guarded)
        };
        let kills = policy.is_some_and(|p| p.mode() == Mode::Kill);
        let (rule, kill) = match (policy.map(needs), stale) {
            (Some((true, _)), None) => ("root_exec", kills),
            (Some((_, true)), None) => ("guarded_identity", kills),
            // Past the staleness limit no cached grant counts: the view may be missing a
            // revocation.
            (Some((true, _) | (_, true)), Some(fail)) => ("stale_grants", fail.kill),
            // No policy was ever received: root activity of humans is what fails closed.
            (None, Some(fail)) if exec && human_root(process, identity, elevated) => {
                ("stale_grants", fail.kill)
            }
            _ => return Verdict::default(),
        };
        Verdict {
            grant: None,
            violation: Some(Violation {
                rule,
                kill,
                detail: detail(body),
            }),
        }
    }

    /// The fail-closed rule, when the grant view is older than its limit (or was never had).
    fn stale(&self, view: Option<&View>, now: u64) -> Option<FailClosed> {
        let fail = self.fail_closed?;
        let issued = view.map_or(0, |v| v.issued_unix_nano);
        let limit = u64::try_from(fail.after.as_nanos()).unwrap_or(u64::MAX);
        (now.saturating_sub(issued) > limit).then_some(fail)
    }
}

/// A human is held to account by audit session; anything else by its cgroup.
#[must_use]
pub fn target_of(process: &Process, identity: &Identity) -> Target {
    match (identity.kind, process.sessionid) {
        (Kind::Human, Some(session)) => Target::Session(session),
        _ => Target::Cgroup(process.cgroup_id),
    }
}

/// A human acting as root: a setuid-root exec (sudo, su, pkexec), anything `elevated` by
/// one (the `sudo -i` or `su -` shell and what it runs, though their uid is 0), or anything
/// in a root login. Root's own work inside a user's login (PAM modules, the motd scripts)
/// is not.
fn human_root(process: &Process, identity: &Identity, elevated: bool) -> bool {
    identity.kind == Kind::Human
        && process.euid == 0
        && (process.uid != 0 || process.loginuid == Some(0) || elevated)
}

fn detail(body: &Body) -> String {
    let mut text = match body {
        Body::Exec { argv, .. } => argv
            .iter()
            .map(|a| String::from_utf8_lossy(a))
            .collect::<Vec<_>>()
            .join(" "),
        Body::Tty { input, data, .. } => format!(
            "{} bytes of terminal {}",
            data.len(),
            if *input { "input" } else { "output" }
        ),
        _ => String::new(),
    };
    text.truncate(text.floor_char_boundary(DETAIL_MAX));
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use proto::v1::{IdentitySelector, grant::OnExpiry};

    use super::*;

    pub const HOST: &str = "host-a";
    pub const T0: u64 = 1_800_000_000_000_000_000;
    pub const SEC: u64 = 1_000_000_000;
    /// An audit session no process on the host has, so kills find nothing to kill.
    pub const SESSION: u32 = u32::MAX - 7;

    pub fn alice() -> Identity {
        Identity {
            kind: Kind::Human,
            name: "alice".into(),
            reason: None,
            grant: None,
        }
    }

    pub fn sudo(euid: u32) -> (Process, Body) {
        (
            Process {
                pid: 10,
                tgid: 10,
                ppid: 1,
                uid: 1000,
                euid,
                gid: 1000,
                loginuid: Some(1000),
                sessionid: Some(SESSION),
                cgroup_id: 77,
                tty: None,
                comm: "sudo".into(),
            },
            Body::Exec {
                filename: "/usr/bin/sudo".into(),
                filename_truncated: false,
                argv: ["sudo", "-n", "id"]
                    .map(|a| a.as_bytes().to_vec().into())
                    .to_vec(),
                argv_truncated: false,
                argv_unreadable: false,
                result: 0,
                tried: Vec::new(),
                cwd: None,
                executable: None,
                interpreter: None,
                image: None,
            },
        )
    }

    pub fn grant(id: &str, hosts: &[&str], on_expiry: OnExpiry) -> Grant {
        Grant {
            id: id.into(),
            identity: Some(IdentitySelector {
                kind: Kind::Human.into(),
                name: "alice".into(),
            }),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            not_before_unix_nano: T0,
            expires_at_unix_nano: T0 + 10 * SEC,
            on_expiry: on_expiry.into(),
            ..Grant::default()
        }
    }

    pub fn view(grants: Vec<Grant>, mode: Mode) -> GrantView {
        GrantView {
            grants,
            policy: Some(Policy {
                mode: mode.into(),
                root_exec: true,
                guarded: Vec::new(),
                require_approval: false,
                fail_closed_on_loss: Mode::Alert.into(),
            }),
            issued_unix_nano: T0,
        }
    }

    fn rules(fail_closed: Option<FailClosed>) -> Rules {
        Rules {
            host: HOST.into(),
            fail_closed,
        }
    }

    fn judge(rules: &Rules, view: Option<&View>, euid: u32, who: &Identity, now: u64) -> Verdict {
        let (process, body) = sudo(euid);
        rules.judge(view, &process, who, false, &body, now)
    }

    #[test]
    fn root_exec_without_a_grant_is_a_violation() {
        let r = rules(None);
        let v = View::adopt(None, view(Vec::new(), Mode::Alert), T0);
        let verdict = judge(&r, Some(&v), 0, &alice(), T0 + SEC);
        assert_eq!(
            verdict,
            Verdict {
                grant: None,
                violation: Some(Violation {
                    rule: "root_exec",
                    kill: false,
                    detail: "sudo -n id".into()
                })
            }
        );
        assert_eq!(
            judge(&r, Some(&v), 1000, &alice(), T0 + SEC),
            Verdict::default(),
            "an unprivileged exec needs no grant"
        );
        let killing = View::adopt(None, view(Vec::new(), Mode::Kill), T0);
        assert!(
            judge(&r, Some(&killing), 0, &alice(), T0 + SEC)
                .violation
                .unwrap()
                .kill
        );
    }

    #[test]
    fn a_grant_covers_its_identity_on_its_hosts_while_active() {
        let r = rules(None);
        let v = View::adopt(
            None,
            view(
                vec![
                    grant("g-other-host", &["host-b"], OnExpiry::Kill),
                    grant("g-1", &[HOST], OnExpiry::Kill),
                ],
                Mode::Alert,
            ),
            T0,
        );
        let covered = judge(&r, Some(&v), 0, &alice(), T0 + SEC);
        assert_eq!(covered.grant.as_deref(), Some("g-1"));
        assert!(covered.violation.is_none());
        let before = judge(&r, Some(&v), 0, &alice(), T0 - 1);
        assert!(
            before.grant.is_none() && before.violation.is_some(),
            "not before not_before"
        );
        let bob = Identity {
            name: "bob".into(),
            ..alice()
        };
        assert!(judge(&r, Some(&v), 0, &bob, T0 + SEC).grant.is_none());
    }

    #[test]
    fn a_grant_missing_from_a_new_view_is_revoked_now() {
        let old = View::adopt(
            None,
            view(vec![grant("g-1", &[], OnExpiry::Kill)], Mode::Alert),
            T0,
        );
        // Revoked as of the new view's issue, whenever it arrives.
        let issued_at = |t| GrantView {
            issued_unix_nano: t,
            ..view(Vec::new(), Mode::Alert)
        };
        let new = View::adopt(Some(&old), issued_at(T0 + 2 * SEC), 5);
        assert_eq!(new.grants.len(), 1);
        assert_eq!(new.grants[0].1.revoked_unix_nano, T0 + 2 * SEC);
        let gone = View::adopt(Some(&new), issued_at(T0 + 12 * SEC), 6);
        assert!(gone.grants.is_empty(), "an ended grant is not carried on");
    }

    /// The view's timeline is the collector's issue time plus boot time since arrival: the
    /// host's wall clock has no part in it.
    #[test]
    fn the_view_counts_time_on_the_boot_clock_from_its_arrival() {
        let v = View::adopt(None, view(Vec::new(), Mode::Alert), 1_000);
        assert_eq!(v.at(1_000), T0);
        assert_eq!(v.at(1_000 + SEC), T0 + SEC);
        assert_eq!(v.at(0), T0 - 1_000);
        assert_eq!(v.boot_at(T0 + 10 * SEC), 1_000 + 10 * SEC);
        assert_eq!(v.boot_at(T0 - SEC), 0, "already passed: at once");
    }

    /// A `sudo -i` shell runs with uid 0: only its elevation says a human acts as root.
    #[test]
    fn an_elevated_root_shell_is_judged_as_the_human_acting_as_root() {
        let r = rules(None);
        let v = View::adopt(None, view(Vec::new(), Mode::Alert), T0);
        let (mut process, body) = sudo(0);
        process.uid = 0;
        let plain = r.judge(Some(&v), &process, &alice(), false, &body, T0 + SEC);
        assert!(
            plain.violation.is_none(),
            "root's own work in a login is not"
        );
        let elevated = r.judge(Some(&v), &process, &alice(), true, &body, T0 + SEC);
        assert_eq!(elevated.violation.map(|v| v.rule), Some("root_exec"));
    }

    /// A view held back in transit (issued 2 s before it arrives, where the last arrived at
    /// once) is placed on the last one's timeline: the delay extends no grant.
    #[test]
    fn a_view_delayed_in_transit_extends_nothing() {
        let first = View::adopt(None, view(Vec::new(), Mode::Alert), 1_000);
        let late = GrantView {
            issued_unix_nano: T0 + SEC,
            ..view(Vec::new(), Mode::Alert)
        };
        let adopted = View::adopt(Some(&first), late, 1_000 + 3 * SEC);
        assert_eq!(
            adopted.at(1_000 + 3 * SEC),
            T0 + 3 * SEC,
            "as the first had it"
        );
        let prompt = GrantView {
            issued_unix_nano: T0 + 4 * SEC,
            ..view(Vec::new(), Mode::Alert)
        };
        let next = View::adopt(Some(&adopted), prompt, 1_000 + 4 * SEC);
        assert_eq!(next.at(1_000 + 4 * SEC), T0 + 4 * SEC);
        // The collector's clock stepped back an hour: its views keep the timeline.
        let stepped = GrantView {
            issued_unix_nano: T0 + 5 * SEC - 3600 * SEC,
            ..view(Vec::new(), Mode::Alert)
        };
        let after = View::adopt(Some(&next), stepped, 1_000 + 5 * SEC);
        assert_eq!(after.at(1_000 + 5 * SEC), T0 + 5 * SEC);
    }

    #[test]
    fn a_stale_view_fails_closed() {
        let fail = FailClosed {
            after: Duration::from_mins(1),
            kill: false,
        };
        let r = rules(Some(fail));
        let never = judge(&r, None, 0, &alice(), T0);
        assert_eq!(
            never.violation.unwrap().rule,
            "stale_grants",
            "no view at all"
        );
        let v = View::adopt(
            None,
            view(
                vec![Grant {
                    expires_at_unix_nano: T0 + 3600 * SEC,
                    ..grant("g-1", &[], OnExpiry::Kill)
                }],
                Mode::Alert,
            ),
            T0,
        );
        assert_eq!(
            judge(&r, Some(&v), 0, &alice(), T0 + SEC).grant.as_deref(),
            Some("g-1"),
            "a fresh view's grant covers"
        );
        let late = judge(&r, Some(&v), 0, &alice(), T0 + 61 * SEC);
        assert!(late.grant.is_none());
        assert_eq!(late.violation.unwrap().rule, "stale_grants");
    }
}
