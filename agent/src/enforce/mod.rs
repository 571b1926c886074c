//! Enforcement. The judge stage (`judge`, applying the pure `rules`) marks covered events and
//! places violations in the chain; everything that acts on the host happens here, in the
//! enforcer, a task of its own off the event path: it adopts each grant view the collector
//! sends (cached durably by `cache`, so grants hold through restarts and outages), ends
//! grants on time on the view's monotonic timeline (`expiry`), writes each used kill-mode
//! grant's end into the kernel's pinned deny maps as a boot-clock deadline (`kernel`), so
//! the kernel kills at it even with the agent dead, and kills live processes (`kill`, and
//! the `reaper` while no agent runs). Every kill, the kernel's and the reaper's included,
//! is an event in the chain.

pub mod cache;
mod expiry;
pub mod judge;
mod kernel;
mod kill;
pub mod reaper;
pub mod rules;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use agent_common::enforce::Deny;
use proto::{
    grant::end,
    v1::{self, GrantView, grant::OnExpiry, policy::Mode},
};
use tokio::{
    sync::{mpsc, watch},
    task::block_in_place,
};
use tracing::{debug, info, warn};

pub use self::kernel::{Kernel, pin_dir, uninstall};
use self::{
    cache::{Cache, Cause, Subject, Usage},
    expiry::Expiry,
    judge::Action,
    reaper::Reaper,
    rules::View,
};
use crate::{
    capture::event::{Body, Event, Kill, Killer, Target},
    clock::{WallClock, boot_ns},
    evidence::encode::encode,
    identity::{attribute::Attributed, cgroup::cgroup2_mount},
};

/// The expiry sweep looks at least this often.
const TICK: Duration = Duration::from_secs(1);
/// Targets whose subject is remembered before the memory is cleared.
const SUBJECTS_MAX: usize = 65_536;
/// A deadline that moves by less than this is left as the kernel holds it.
const ARM_SLACK_NS: u64 = 100_000_000;

/// What the enforcer listens to.
pub struct Inputs {
    /// Grant views as the collector sends them.
    pub views: watch::Receiver<Option<GrantView>>,
    /// From the judge stage.
    pub actions: mpsc::UnboundedReceiver<Vec<Action>>,
    /// Kill records of the kernel, from the decode stage.
    pub kernel_kills: mpsc::UnboundedReceiver<Vec<Event>>,
}

/// Where the enforcer's results go.
pub struct Outputs {
    /// The view the judge stage judges by.
    pub view: watch::Sender<Option<Arc<View>>>,
    /// Kill events, to the chain.
    pub events: mpsc::Sender<Vec<v1::Event>>,
}

pub struct Enforcer {
    clock: WallClock,
    /// Maps a session root's start, as the encode stage does, so a kill is filed under the
    /// same session key as the session's events.
    sessions: WallClock,
    view: Option<Arc<View>>,
    usage: Usage,
    expiry: Expiry,
    /// Why each deny entry exists, by the cause id the kernel's kill records carry; kept
    /// in the cache, since the entries outlive this agent.
    causes: Vec<Cause>,
    /// The deadline written for each target whose kill-mode grant is still running.
    armed: HashMap<Target, u64>,
    /// Sessions a process moved to by writing its loginuid, by the session it was born in.
    aliases: HashMap<Target, Vec<Target>>,
    /// Whose each target acting under a grant or killed for a violation is.
    subjects: HashMap<Target, Subject>,
    cache: Option<Cache>,
    kernel: Option<Kernel>,
    reaper: Option<Reaper>,
    cgroup_root: Option<PathBuf>,
    /// Kills made while no agent ran, to chain first.
    pending: Vec<v1::Event>,
}

impl Enforcer {
    /// Starts from what `cache` holds, if anything, and the kills a reaper recorded;
    /// `sessions` maps session roots' starts as the encode stage does.
    #[must_use]
    pub fn new(
        cache: Option<Cache>,
        kernel: Option<Kernel>,
        reaper: Option<Reaper>,
        sessions: WallClock,
    ) -> Self {
        // A cached view arrived before this agent started: its arrival on the boot clock
        // is inferred once, from the wall clock.
        let view = cache.as_ref().and_then(Cache::view).map(|v| {
            let age = proto::time::now_unix_nano().saturating_sub(v.issued_unix_nano);
            Arc::new(View::adopt(None, v, boot_ns().saturating_sub(age)))
        });
        let causes = cache.as_ref().map(Cache::causes).unwrap_or_default();
        let mut enforcer = Self {
            clock: WallClock::now(),
            sessions,
            view,
            usage: cache.as_ref().map(Cache::usage).unwrap_or_default(),
            expiry: Expiry::default(),
            causes,
            armed: HashMap::new(),
            aliases: HashMap::new(),
            subjects: HashMap::new(),
            cache,
            kernel,
            reaper,
            cgroup_root: cgroup2_mount(),
            pending: Vec::new(),
        };
        let recorded = enforcer
            .reaper
            .as_ref()
            .and_then(|r| r.spool.as_deref())
            .map(reaper::take_reaped)
            .unwrap_or_default();
        for kill in recorded {
            let event = Event {
                ktime_ns: kill.boot_ns,
                process: None,
                body: Body::Kill(Kill {
                    by: Killer::Reaper,
                    cause: kill.cause,
                    grant_id: String::new(),
                    reason: "",
                    target: Some(kill.target),
                    pids: kill.pids,
                }),
            };
            let event = enforcer.resolve(event);
            enforcer.pending.push(event);
        }
        enforcer
    }

    /// The view to judge by until the enforcer publishes another.
    #[must_use]
    pub fn view(&self) -> Option<Arc<View>> {
        self.view.clone()
    }

    /// Runs until the pipeline stages feeding it have ended.
    pub async fn run(mut self, mut inputs: Inputs, out: Outputs) {
        let (mut actions_open, mut kills_open, mut views_open) = (true, true, true);
        let mut heard = false;
        let mut events = std::mem::take(&mut self.pending);
        while actions_open || kills_open {
            let wait = self
                .view
                .as_ref()
                .and_then(|v| {
                    let now = v.at(boot_ns());
                    self.expiry
                        .next_end(v)
                        .map(|end| Duration::from_nanos(end.saturating_sub(now)))
                })
                .map_or(TICK, |wait| wait.min(TICK));
            tokio::select! {
                changed = inputs.views.changed(), if views_open => match changed {
                    Ok(()) => {
                        let view = inputs.views.borrow_and_update().clone();
                        if let Some(view) = view {
                            // The first view from the collector in this run is news even
                            // when it matches the one cached.
                            let before = self.view.clone().filter(|_| heard);
                            heard = true;
                            self.adopt(view);
                            // The judge has the view before anyone is told it was adopted.
                            out.view.send_replace(self.view.clone());
                            self.adopted(before.as_deref());
                        }
                    }
                    Err(_) => views_open = false,
                },
                actions = inputs.actions.recv(), if actions_open => match actions {
                    Some(actions) => {
                        for action in actions {
                            events.extend(self.act(action));
                        }
                    }
                    None => actions_open = false,
                },
                kills = inputs.kernel_kills.recv(), if kills_open => match kills {
                    Some(kills) => events.extend(kills.into_iter().map(|k| self.resolve(k))),
                    None => kills_open = false,
                },
                () = tokio::time::sleep(wait) => {}
            }
            events.extend(self.sweep());
            if !events.is_empty() && out.events.send(std::mem::take(&mut events)).await.is_err() {
                return;
            }
        }
    }

    fn adopt(&mut self, view: GrantView) {
        let view = View::adopt(self.view.as_deref(), view, boot_ns());
        if let Some(cache) = &self.cache {
            block_in_place(|| cache.save_view(&view.to_proto()));
        }
        self.view = Some(Arc::new(view));
    }

    /// Once the judge has the adopted view: says so, and moves the kernel's deadlines as
    /// the view does (an extension later, a revocation to now). The collector sends its view
    /// again every 30 s (its `VIEW_REFRESH`) whether or not it changed: only a view whose
    /// grants or policy differ from the one `before` it is logged at info, so that a quiet
    /// host's log is not the same line twice a minute.
    fn adopted(&mut self, before: Option<&View>) {
        if let Some(view) = &self.view {
            let ids: Vec<&str> = view.grants.iter().map(|(id, _)| &**id).collect();
            if before.is_some_and(|b| b.grants == view.grants && b.policy == view.policy) {
                debug!(grants = ?ids, "grant view adopted, unchanged");
            } else {
                info!(grants = ?ids, "grant view adopted");
            }
            crate::sinks::notify::grants(ids.iter().copied());
        }
        let targets: Vec<Target> = self.usage.values().flatten().copied().collect();
        for target in targets {
            self.arm(target);
        }
    }

    /// Writes `target`'s deadline into the kernel: the earliest end of the kill-mode grants
    /// it used. A deadline already passed there stays: what died stays dead.
    fn arm(&mut self, target: Target) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let Some((grant, deadline)) = view
            .grants
            .iter()
            .filter(|(id, g)| {
                g.on_expiry() == OnExpiry::Kill
                    && self.usage.get(&**id).is_some_and(|t| t.contains(&target))
            })
            .map(|(id, g)| (id, view.boot_at(end(g))))
            .min_by_key(|(_, deadline)| *deadline)
        else {
            return;
        };
        // Each view places the same end a little differently on the boot clock (its transit
        // time): only a real move (an extension, a revocation) is written again.
        if self
            .armed
            .get(&target)
            .is_some_and(|armed| armed.abs_diff(deadline) < ARM_SLACK_NS)
        {
            return;
        }
        let passed = |k: &Kernel| k.get(target).is_some_and(|d| d.deadline_ns <= boot_ns());
        if self.kernel.as_ref().is_none_or(passed) {
            return;
        }
        let cause = self.cause(grant.to_string(), "expired", target);
        let Some(kernel) = &mut self.kernel else {
            return;
        };
        match kernel.deny(target, Deny::new(cause, deadline)) {
            Ok(()) => {
                info!(
                    ?target,
                    grant = &**grant,
                    in_ms = deadline.saturating_sub(boot_ns()) / 1_000_000,
                    "deadline armed in the kernel"
                );
                self.armed.insert(target, deadline);
                if let Some(reaper) = &self.reaper
                    && let Err(e) = reaper.ensure_running()
                {
                    warn!(
                        error = format!("{e:#}"),
                        "no reaper: idle tasks die only while the agent runs"
                    );
                }
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                ?target,
                "cannot arm a deadline in the kernel; the agent's own sweep enforces it"
            ),
        }
    }

    /// Makes `alias` share `born`'s fate: the grants `born` used, its deadline, and its
    /// death if that has come.
    fn alias(&mut self, born: Target, alias: Target) -> Option<v1::Event> {
        let aliases = self.aliases.entry(born).or_default();
        if aliases.contains(&alias) {
            return None;
        }
        aliases.push(alias);
        info!(
            ?born,
            ?alias,
            "a process left its session: enforced as the one it was born in"
        );
        for targets in self.usage.values_mut() {
            if targets.contains(&born) {
                targets.insert(alias);
            }
        }
        if let Some(cache) = &self.cache {
            block_in_place(|| cache.save_usage(&self.usage));
        }
        self.arm(alias);
        let now = boot_ns();
        let passed = self
            .kernel
            .as_ref()
            .and_then(|k| k.get(born))
            .filter(|deny| deny.deadline_ns <= now)?;
        let cause = self.causes.get(passed.cause as usize).cloned();
        let (grant, reason) = cause.map_or((String::new(), "violation"), |c| {
            (c.grant_id, cache::reason(&c.reason))
        });
        Some(self.kill(alias, grant, reason))
    }

    /// The cause id of `grant_id` ending for `reason` at `target`: a new one is kept
    /// durably.
    fn cause(&mut self, grant_id: String, reason: &'static str, target: Target) -> u32 {
        if let Some(known) = self
            .causes
            .iter()
            .rposition(|c| c.grant_id == grant_id && c.reason == reason && c.target == target)
        {
            return u32::try_from(known).unwrap_or(u32::MAX);
        }
        let cause = u32::try_from(self.causes.len()).unwrap_or(u32::MAX);
        self.causes.push(Cause {
            grant_id,
            reason: reason.to_owned(),
            target,
            subject: self.subjects.get(&target).cloned(),
        });
        if let Some(cache) = &self.cache {
            block_in_place(|| cache.save_causes(&self.causes));
        }
        cause
    }

    fn act(&mut self, action: Action) -> Vec<v1::Event> {
        match action {
            Action::Used {
                grant,
                target,
                subject,
            } => {
                self.note(target, subject);
                if !self
                    .usage
                    .entry(grant.to_string())
                    .or_default()
                    .insert(target)
                {
                    return Vec::new();
                }
                if let Some(cache) = &self.cache {
                    block_in_place(|| cache.save_usage(&self.usage));
                }
                self.arm(target);
                // Used just as it ended: the sweep that ended it did not know this target.
                let killing = self.view.as_ref().is_some_and(|v| {
                    v.grants.iter().any(|(id, g)| {
                        *id == grant
                            && g.on_expiry() == OnExpiry::Kill
                            && self.expiry.has_ended(id, end(g))
                    })
                });
                killing
                    .then(|| self.kill(target, grant.to_string(), "expired"))
                    .into_iter()
                    .collect()
            }
            Action::Kill {
                target,
                reason,
                subject,
            } => {
                self.note(target, subject);
                vec![self.kill(target, String::new(), reason)]
            }
            Action::Alias { born, alias } => self.alias(born, alias).into_iter().collect(),
            Action::ExecLost { records } => self.exec_lost(records),
        }
    }

    /// Exec records were lost, so whoever made them went unjudged. The targets holding a
    /// running kill-mode grant they used may have been among them: the agent cannot tell
    /// whose the records were. With `fail_closed_on_loss: kill` each of them is killed;
    /// otherwise an alert names them.
    fn exec_lost(&mut self, records: u64) -> Vec<v1::Event> {
        let Some(view) = self.view.clone() else {
            return Vec::new();
        };
        let now = view.at(boot_ns());
        let mut held: BTreeMap<Target, String> = BTreeMap::new();
        for (id, grant) in &view.grants {
            if grant.on_expiry() != OnExpiry::Kill
                || end(grant) <= now
                || self.expiry.has_ended(id, end(grant))
            {
                continue;
            }
            for target in self.usage.get(&**id).into_iter().flatten() {
                held.entry(*target).or_insert_with(|| id.to_string());
            }
        }
        if held.is_empty() {
            return Vec::new();
        }
        let kill = view
            .policy
            .as_ref()
            .is_some_and(|p| p.fail_closed_on_loss() == Mode::Kill);
        warn!(
            records,
            targets = held.len(),
            kill,
            "exec records lost while kill-mode grants are in use"
        );
        if kill {
            return held
                .into_iter()
                .map(|(target, grant)| self.kill(target, grant, "exec_lost"))
                .collect();
        }
        vec![self.encode(
            Event {
                ktime_ns: boot_ns(),
                process: None,
                body: Body::ExecLost {
                    records,
                    targets: held.into_keys().collect(),
                },
            },
            None,
        )]
    }

    /// Ends every grant whose end has come: with `on_expiry: kill`, what used it is denied
    /// and killed. Returns the kill events.
    fn sweep(&mut self) -> Vec<v1::Event> {
        let Some(view) = self.view.clone() else {
            return Vec::new();
        };
        let ended = self.expiry.due(&view, view.at(boot_ns()));
        if ended.is_empty() {
            return Vec::new();
        }
        let mut events = Vec::new();
        for grant in ended {
            let targets = self.usage.remove(&grant.id).unwrap_or_default();
            info!(
                grant = grant.id,
                reason = grant.reason,
                sessions = targets.len(),
                kill = grant.kill,
                "grant ended"
            );
            if grant.kill {
                for target in targets {
                    events.push(self.kill(target, grant.id.clone(), grant.reason));
                }
            }
        }
        if let Some(cache) = &self.cache {
            block_in_place(|| cache.save_usage(&self.usage));
        }
        events
    }

    /// Denies `target` in the kernel at once, then kills its live processes.
    fn kill(&mut self, target: Target, grant_id: String, reason: &'static str) -> v1::Event {
        let cause = self.cause(grant_id.clone(), reason, target);
        self.armed.remove(&target);
        if let Some(kernel) = &mut self.kernel
            && let Err(e) = kernel.deny(target, Deny::new(cause, 0))
        {
            warn!(
                error = format!("{e:#}"),
                ?target,
                "cannot deny in the kernel; killing from here only"
            );
        }
        let mut pids = block_in_place(|| kill::kill_live(target, self.cgroup_root.as_deref()));
        // The sessions its processes moved to die with it.
        for alias in self.aliases.get(&target).cloned().unwrap_or_default() {
            if let Some(kernel) = &mut self.kernel
                && let Err(e) = kernel.deny(alias, Deny::new(cause, 0))
            {
                warn!(
                    error = format!("{e:#}"),
                    ?alias,
                    "cannot deny in the kernel"
                );
            }
            pids.extend(block_in_place(|| {
                kill::kill_live(alias, self.cgroup_root.as_deref())
            }));
        }
        info!(?target, grant = grant_id, reason, ?pids, "killed");
        // Known from this run's events, else from the deny cause an earlier run kept (a
        // session that used the grant before a restart).
        let subject = self.subjects.get(&target).cloned().or_else(|| {
            self.causes
                .get(cause as usize)
                .and_then(|c| c.subject.clone())
        });
        self.encode(
            Event {
                ktime_ns: boot_ns(),
                process: None,
                body: Body::Kill(Kill {
                    by: Killer::Agent,
                    cause,
                    grant_id,
                    reason,
                    target: Some(target),
                    pids,
                }),
            },
            subject.as_ref(),
        )
    }

    /// Remembers whose `target` is, from the first event of it the judge acted on.
    fn note(&mut self, target: Target, subject: Subject) {
        // Bounded like the judge's memory: a target forgotten here only makes its kill
        // unfiled, and a kill-mode grant's targets are kept in their deny causes anyway.
        if self.subjects.len() >= SUBJECTS_MAX && !self.subjects.contains_key(&target) {
            self.subjects.clear();
        }
        self.subjects.entry(target).or_insert(subject);
    }

    /// A kill the kernel or the reaper made, with the grant and reason of the deny entry
    /// behind it.
    fn resolve(&mut self, mut event: Event) -> v1::Event {
        let mut subject = None;
        if let Body::Kill(kill) = &mut event.body
            && kill.by != Killer::Agent
            && let Some(cause) = self.causes.get(kill.cause as usize)
        {
            kill.grant_id.clone_from(&cause.grant_id);
            kill.reason = cache::reason(&cause.reason);
            kill.target = Some(cause.target);
            subject = cause.subject.clone();
        }
        self.encode(event, subject.as_ref())
    }

    /// `event`, filed under `subject` when known.
    fn encode(&mut self, event: Event, subject: Option<&Subject>) -> v1::Event {
        self.clock.follow_steps();
        let item = match subject {
            Some(subject) => subject.attribute(event),
            None => Attributed::bare(event),
        };
        encode(item, &self.clock, &self.sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::proctable::SessionRoot;

    /// A session that used a kill-mode grant before the agent restarted is killed by the
    /// next agent at the grant's end, and that kill is filed under the session its deny
    /// cause kept.
    #[test]
    fn a_kill_after_a_restart_is_filed_under_the_subject_its_cause_kept() {
        let dir = crate::testing::Scratch::new("enforce-restart");
        // No such audit session: the kill finds nothing to signal.
        let target = Target::Session(u32::MAX - 7);
        let subject = Subject {
            kind: proto::v1::identity::Kind::Human.into(),
            name: "alice".into(),
            root: Some(SessionRoot {
                pid: 4321,
                start_ns: 1_000,
            }),
        };
        Cache::new(&dir).save_causes(&[Cause {
            grant_id: "g-1".into(),
            reason: "expired".into(),
            target,
            subject: Some(subject),
        }]);
        let mut next = Enforcer::new(Some(Cache::new(&dir)), None, None, WallClock::now());
        let kill = next.kill(target, "g-1".into(), "expired");
        assert_eq!(kill.identity.map(|i| i.name).as_deref(), Some("alice"));
        assert_eq!(kill.session_root.map(|r| r.pid), Some(4321));
    }
}
