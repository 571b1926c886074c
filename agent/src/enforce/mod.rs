//! Enforcement. The judge stage (`judge`, applying the pure `rules`) marks covered events and
//! places violations in the chain; everything that acts on the host happens here, in the
//! enforcer, a task of its own off the event path: it adopts each grant view the collector
//! sends (cached durably by `cache`, so grants hold through restarts and outages), ends
//! grants on time by this host's clock (`expiry`), denies sessions and cgroups in the
//! kernel (`kernel`) and kills their live processes (`kill`). Every kill, the kernel's
//! included, is an event in the chain.

pub mod cache;
mod expiry;
pub mod judge;
mod kernel;
mod kill;
pub mod rules;

use std::{path::PathBuf, sync::Arc, time::Duration};

use proto::v1::{self, GrantView, grant::OnExpiry};
use tokio::{
    sync::{mpsc, watch},
    task::block_in_place,
};
use tracing::{info, warn};

pub use self::kernel::Kernel;
use self::{cache::Cache, cache::Usage, expiry::Expiry, judge::Action, rules::View};
use crate::{
    capture::event::{Body, Event, Kill, Killer, Target},
    clock::{WallClock, boot_ns},
    evidence::encode::encode,
    identity::{attribute::Attributed, cgroup::cgroup2_mount},
};

/// The expiry clock looks at least this often, so a wall-clock step cannot hide an expiry
/// for long.
const TICK: Duration = Duration::from_secs(1);

/// Why a deny entry exists, by the cause id the kernel's kill records carry.
struct Cause {
    grant_id: String,
    reason: &'static str,
    target: Target,
}

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
    view: Option<Arc<View>>,
    usage: Usage,
    expiry: Expiry,
    causes: Vec<Cause>,
    cache: Option<Cache>,
    kernel: Option<Kernel>,
    cgroup_root: Option<PathBuf>,
}

impl Enforcer {
    /// Starts from what `cache` holds, if anything.
    #[must_use]
    pub fn new(cache: Option<Cache>, kernel: Option<Kernel>) -> Self {
        let now = proto::time::now_unix_nano();
        let view = cache
            .as_ref()
            .and_then(Cache::view)
            .map(|v| Arc::new(View::adopt(None, v, now)));
        Self {
            clock: WallClock::now(),
            view,
            usage: cache.as_ref().map(Cache::usage).unwrap_or_default(),
            expiry: Expiry::default(),
            causes: Vec::new(),
            cache,
            kernel,
            cgroup_root: cgroup2_mount(),
        }
    }

    /// The view to judge by until the enforcer publishes another.
    #[must_use]
    pub fn view(&self) -> Option<Arc<View>> {
        self.view.clone()
    }

    /// Runs until the pipeline stages feeding it have ended.
    pub async fn run(mut self, mut inputs: Inputs, out: Outputs) {
        let (mut actions_open, mut kills_open, mut views_open) = (true, true, true);
        while actions_open || kills_open {
            let now = proto::time::now_unix_nano();
            let wait = self
                .view
                .as_ref()
                .and_then(|v| self.expiry.next_end(v))
                .map_or(TICK, |end| Duration::from_nanos(end.saturating_sub(now)))
                .min(TICK);
            let mut events = Vec::new();
            tokio::select! {
                changed = inputs.views.changed(), if views_open => match changed {
                    Ok(()) => {
                        let view = inputs.views.borrow_and_update().clone();
                        if let Some(view) = view {
                            self.adopt(view);
                            out.view.send_replace(self.view.clone());
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
            events.extend(self.sweep(proto::time::now_unix_nano()));
            if !events.is_empty() && out.events.send(events).await.is_err() {
                return;
            }
        }
    }

    fn adopt(&mut self, view: GrantView) {
        let view = View::adopt(self.view.as_deref(), view, proto::time::now_unix_nano());
        let ids: Vec<&str> = view.grants.iter().map(|(id, _)| &**id).collect();
        info!(grants = ?ids, "grant view adopted");
        crate::sinks::notify::grants(ids.iter().copied());
        if let Some(cache) = &self.cache {
            block_in_place(|| cache.save_view(&view.to_proto()));
        }
        self.view = Some(Arc::new(view));
    }

    fn act(&mut self, action: Action) -> Option<v1::Event> {
        match action {
            Action::Used { grant, target } => {
                if !self
                    .usage
                    .entry(grant.to_string())
                    .or_default()
                    .insert(target)
                {
                    return None;
                }
                if let Some(cache) = &self.cache {
                    block_in_place(|| cache.save_usage(&self.usage));
                }
                // Used just as it ended: the sweep that ended it did not know this target.
                let killing = self.expiry.has_ended(&grant)
                    && self.view.as_ref().is_some_and(|v| {
                        v.grants
                            .iter()
                            .any(|(id, g)| *id == grant && g.on_expiry() == OnExpiry::Kill)
                    });
                killing.then(|| self.kill(target, grant.to_string(), "expired"))
            }
            Action::Kill { target, reason } => Some(self.kill(target, String::new(), reason)),
        }
    }

    /// Ends every grant whose end has come: with `on_expiry: kill`, what used it is denied
    /// and killed. Returns the kill events.
    fn sweep(&mut self, now: u64) -> Vec<v1::Event> {
        let Some(view) = self.view.clone() else {
            return Vec::new();
        };
        let ended = self.expiry.due(&view, now);
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

    /// Denies `target` in the kernel, then kills its live processes.
    fn kill(&mut self, target: Target, grant_id: String, reason: &'static str) -> v1::Event {
        let cause = u32::try_from(self.causes.len()).unwrap_or(u32::MAX);
        if let Some(kernel) = &mut self.kernel
            && let Err(e) = kernel.deny(target, cause)
        {
            warn!(
                error = format!("{e:#}"),
                ?target,
                "cannot deny in the kernel; killing from here only"
            );
        }
        let pids = block_in_place(|| kill::kill_live(target, self.cgroup_root.as_deref()));
        info!(?target, grant = grant_id, reason, ?pids, "killed");
        self.causes.push(Cause {
            grant_id: grant_id.clone(),
            reason,
            target,
        });
        self.encode(Event {
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
        })
    }

    /// A kill the kernel made, with the grant and reason of the deny entry behind it.
    fn resolve(&mut self, mut event: Event) -> v1::Event {
        if let Body::Kill(kill) = &mut event.body
            && kill.by == Killer::Kernel
            && let Some(cause) = self.causes.get(kill.cause as usize)
        {
            kill.grant_id.clone_from(&cause.grant_id);
            kill.reason = cause.reason;
            kill.target = Some(cause.target);
        }
        self.encode(event)
    }

    fn encode(&mut self, event: Event) -> v1::Event {
        self.clock.follow_steps();
        encode(Attributed::bare(event), &self.clock)
    }
}
