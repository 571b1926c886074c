//! The enforce stage: the grants and policy the collector sends (cached durably, so they
//! hold through restarts and outages), judged against each event in the attribute stage,
//! and acted on by the agent's own clock. Activity that needs a grant and has none is a
//! violation; a grant that ends with `on_expiry: kill`, or a violation in kill mode, puts
//! the session (or the cgroup of a non-human identity) in the kernel's deny maps
//! (`agent-ebpf/src/enforce.rs`, attached at the first such entry) and kills its live
//! processes from here. Every kill is an event in the chain.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    io::Write as _,
    os::fd::FromRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use agent_common::enforce::{DENY_CGROUPS_MAP, DENY_SESSIONS_MAP, Deny};
use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData};
use prost::Message as _;
use proto::{
    grant::{applies_on, end, is_live, revoked_first},
    v1::{Grant, GrantView, IdentitySelector, grant::OnExpiry, policy::Mode},
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    attribute::{Identity, IdentityKind, cgroup_of, cgroup2_mount},
    event::{Body, Event, Kill, Killer, Process, Target},
    model::proto_kind,
    reader::{boot_ns, clock_ns},
    sensors,
};

const VIEW_FILE: &str = "grants.pb";
const USAGE_FILE: &str = "grant-usage.json";
/// Longest command line a violation repeats.
const DETAIL_MAX: usize = 256;
/// The expiry clock looks at least this often, so a wall-clock step cannot hide an expiry
/// for long.
const TICK: Duration = Duration::from_secs(1);
/// Passes over /proc per kill: the second and third catch children forked during the one
/// before (the kernel's deny map catches them too, at their first syscall).
const KILL_PASSES: usize = 3;

/// Staleness rule: with no fresh grant view, privileged activity is judged as if no grant
/// covered it.
#[derive(Clone, Copy, Debug)]
pub struct FailClosed {
    pub after: Duration,
    pub kill: bool,
}

/// The kernel side: the loaded programs, the deny maps, and whether the enforcement
/// program is attached yet.
pub struct Kernel {
    ebpf: aya::Ebpf,
    attached: bool,
    sessions: BpfHashMap<MapData, u32, Deny>,
    cgroups: BpfHashMap<MapData, u64, Deny>,
}

impl Kernel {
    /// Takes the deny maps out of `ebpf` and loads the enforcement program; holds `ebpf`, and
    /// so every attached program, for as long as enforcement runs.
    pub fn new(mut ebpf: aya::Ebpf) -> anyhow::Result<Self> {
        sensors::load_enforcement(&mut ebpf)?;
        Ok(Self {
            sessions: BpfHashMap::try_from(take_map(&mut ebpf, DENY_SESSIONS_MAP)?)?,
            cgroups: BpfHashMap::try_from(take_map(&mut ebpf, DENY_CGROUPS_MAP)?)?,
            ebpf,
            attached: false,
        })
    }

    fn deny(&mut self, target: Target, cause: u32) -> anyhow::Result<()> {
        let deny = Deny { cause };
        match target {
            Target::Session(id) => self.sessions.insert(id, deny, 0)?,
            Target::Cgroup(id) => self.cgroups.insert(id, deny, 0)?,
        }
        if !self.attached {
            sensors::attach_enforcement(&mut self.ebpf)?;
            self.attached = true;
        }
        Ok(())
    }
}

fn take_map(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} is missing from the kernel programs"))
}

/// Why a deny entry exists, by the cause id the kernel's kill records carry.
struct Cause {
    grant_id: String,
    reason: &'static str,
    target: Target,
}

/// What the attribute stage does with one event.
#[derive(Debug, Default)]
pub struct Judgement {
    /// The grant the event is covered by.
    pub grant: Option<String>,
    /// Events that follow it in the chain: a violation, and the kill it led to.
    pub follow: Vec<Event>,
}

pub struct Enforcer {
    host: String,
    view: Option<GrantView>,
    cache: Option<PathBuf>,
    fail_closed: Option<FailClosed>,
    /// Where each grant was used: what to kill when it ends.
    usage: HashMap<String, BTreeSet<Target>>,
    ended: HashSet<String>,
    causes: Vec<Cause>,
    kernel: Option<Kernel>,
    cgroup_root: Option<PathBuf>,
}

impl Enforcer {
    /// Starts from the view and usage cached in `cache` (the spool directory), if any.
    #[must_use]
    pub fn new(
        host: String,
        cache: Option<&Path>,
        kernel: Option<Kernel>,
        fail_closed: Option<FailClosed>,
    ) -> Self {
        let view = cache.and_then(|dir| {
            let bytes = fs::read(dir.join(VIEW_FILE)).ok()?;
            GrantView::decode(bytes.as_slice())
                .inspect_err(
                    |e| warn!(error = %e, "the cached grant view is unreadable; ignoring it"),
                )
                .ok()
        });
        let usage = cache
            .and_then(|dir| fs::read(dir.join(USAGE_FILE)).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        if let Some(view) = &view {
            info!(
                grants = view.grants.len(),
                "grant view loaded from the cache"
            );
        }
        Self {
            host,
            view,
            cache: cache.map(Path::to_path_buf),
            fail_closed,
            usage,
            ended: HashSet::new(),
            causes: Vec::new(),
            kernel,
            cgroup_root: cgroup2_mount(),
        }
    }

    /// Adopts a view from the collector. A grant that was in the last view and is missing
    /// from this one, before its end, is taken as revoked now: losing sight of a grant must
    /// not extend it.
    pub fn update(&mut self, mut view: GrantView, now: u64) {
        if let Some(old) = self.view.take() {
            for mut grant in old.grants {
                if end(&grant) > now && !view.grants.iter().any(|g| g.id == grant.id) {
                    grant.revoked_unix_nano = now;
                    view.grants.push(grant);
                }
            }
        }
        let ids: Vec<&str> = view.grants.iter().map(|g| g.id.as_str()).collect();
        info!(grants = ?ids, "grant view adopted");
        if let Some(dir) = &self.cache
            && let Err(e) = write_atomic(&dir.join(VIEW_FILE), &view.encode_to_vec())
        {
            warn!(error = %e, "cannot cache the grant view");
        }
        self.view = Some(view);
    }

    /// Judges one event of `identity` at wall-clock `now`.
    pub fn judge(&mut self, event: &Event, identity: Option<&Identity>, now: u64) -> Judgement {
        let (Some(process), Some(identity)) = (&event.process, identity) else {
            return Judgement::default();
        };
        let exec = matches!(event.body, Body::Exec { .. });
        if !exec && !matches!(event.body, Body::Tty { .. }) {
            return Judgement::default();
        }
        let target = target_of(process, identity);
        let stale = self.stale(now);
        if stale.is_none()
            && let Some(grant) = self.covering(identity, now)
        {
            let id = grant.id.clone();
            if self.usage.entry(id.clone()).or_default().insert(target) {
                self.save_usage();
            }
            return Judgement {
                grant: Some(id),
                follow: Vec::new(),
            };
        }
        if identity.grant.is_some() {
            // A registration vouches for the session.
            return Judgement::default();
        }
        let policy = self.view.as_ref().and_then(|v| v.policy.as_ref());
        let needs = |p: &proto::v1::Policy| {
            let root_exec = p.root_exec && exec && human_root(process, identity);
            let guarded = identity.kind != IdentityKind::Human
                && p.guarded.iter().any(|s| selects(s, identity));
            (root_exec, guarded)
        };
        let (rule, kill) = match (policy.map(needs), stale) {
            (Some((true, _)), None) => ("root_exec", policy_kills(policy)),
            (Some((_, true)), None) => ("guarded_identity", policy_kills(policy)),
            // Past the staleness limit no cached grant counts: the view may be missing a
            // revocation.
            (Some((true, _) | (_, true)), Some(fail)) => ("stale_grants", fail.kill),
            // No policy was ever received: root activity of humans is what fails closed.
            (None, Some(fail)) if exec && human_root(process, identity) => {
                ("stale_grants", fail.kill)
            }
            _ => return Judgement::default(),
        };
        let mut follow = vec![Event {
            ktime_ns: event.ktime_ns,
            process: event.process.clone(),
            body: Body::Violation {
                rule,
                action: if kill { "kill" } else { "alert" },
                detail: detail(&event.body),
            },
        }];
        if kill {
            follow.push(self.kill(target, String::new(), "violation"));
        }
        Judgement {
            grant: None,
            follow,
        }
    }

    /// Fills in the grant and reason of a kill the kernel made.
    pub fn resolve(&self, kill: &mut Kill) {
        if kill.by == Killer::Kernel
            && let Some(cause) = self.causes.get(kill.cause as usize)
        {
            kill.grant_id.clone_from(&cause.grant_id);
            kill.reason = cause.reason;
            kill.target = Some(cause.target);
        }
    }

    /// Ends every grant whose end has come: with `on_expiry: kill`, the sessions that used
    /// it are denied and killed. Returns the kill events.
    pub fn sweep(&mut self, now: u64) -> Vec<Event> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        let ended: Vec<(String, bool, &'static str)> = view
            .grants
            .iter()
            .filter(|g| !self.ended.contains(&g.id) && end(g) <= now)
            .map(|g| {
                (
                    g.id.clone(),
                    g.on_expiry() == OnExpiry::Kill,
                    if revoked_first(g) {
                        "revoked"
                    } else {
                        "expired"
                    },
                )
            })
            .collect();
        let mut events = Vec::new();
        let any_ended = !ended.is_empty();
        for (id, kill, reason) in ended {
            self.ended.insert(id.clone());
            let targets = self.usage.remove(&id).unwrap_or_default();
            info!(
                grant = id,
                reason,
                sessions = targets.len(),
                kill,
                "grant ended"
            );
            if kill {
                for target in targets {
                    events.push(self.kill(target, id.clone(), reason));
                }
            }
        }
        if any_ended {
            self.save_usage();
        }
        events
    }

    /// When the next grant ends, if one is pending.
    #[must_use]
    pub fn next_end(&self) -> Option<u64> {
        self.view
            .as_ref()?
            .grants
            .iter()
            .filter(|g| !self.ended.contains(&g.id))
            .map(end)
            .min()
    }

    /// Denies `target` in the kernel, then kills its live processes.
    fn kill(&mut self, target: Target, grant_id: String, reason: &'static str) -> Event {
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
        let pids = kill_live(target, self.cgroup_root.as_deref());
        info!(?target, grant = grant_id, reason, ?pids, "killed");
        self.causes.push(Cause {
            grant_id: grant_id.clone(),
            reason,
            target,
        });
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
        }
    }

    /// The active grant for `identity` on this host at `now`.
    fn covering(&self, identity: &Identity, now: u64) -> Option<&Grant> {
        self.view.as_ref()?.grants.iter().find(|g| {
            is_live(g, now)
                && applies_on(g, &self.host)
                && g.identity.as_ref().is_some_and(|s| selects(s, identity))
        })
    }

    /// The fail-closed rule, when the grant view is older than its limit (or was never had).
    fn stale(&self, now: u64) -> Option<FailClosed> {
        let fail = self.fail_closed?;
        let issued = self.view.as_ref().map_or(0, |v| v.issued_unix_nano);
        let limit = u64::try_from(fail.after.as_nanos()).unwrap_or(u64::MAX);
        (now.saturating_sub(issued) > limit).then_some(fail)
    }

    fn save_usage(&self) {
        let Some(dir) = &self.cache else { return };
        let written = serde_json::to_vec(&self.usage)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&dir.join(USAGE_FILE), &bytes));
        if let Err(e) = written {
            warn!(error = %e, "cannot save where grants were used");
        }
    }
}

/// Whether a grant's or the policy's selector names `identity`.
fn selects(selector: &IdentitySelector, identity: &Identity) -> bool {
    selector.kind == i32::from(proto_kind(identity.kind)) && selector.name == identity.name
}

/// A human acting as root: a setuid-root exec (sudo, su, pkexec) or anything in a root
/// login. Root's own work inside a user's login (PAM modules, the motd scripts) is not.
fn human_root(process: &Process, identity: &Identity) -> bool {
    identity.kind == IdentityKind::Human
        && process.euid == 0
        && (process.uid != 0 || process.loginuid == Some(0))
}

fn policy_kills(policy: Option<&proto::v1::Policy>) -> bool {
    policy.is_some_and(|p| p.mode() == Mode::Kill)
}

/// A human is held to account by audit session; anything else by its cgroup.
fn target_of(process: &Process, identity: &Identity) -> Target {
    match (identity.kind, process.sessionid) {
        (IdentityKind::Human, Some(session)) => Target::Session(session),
        _ => Target::Cgroup(process.cgroup_id),
    }
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

fn now_unix_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Writes `path` so that a crash leaves the old or the new contents, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether process `pid` belongs to `target` now.
fn belongs(pid: u32, target: Target, cgroup_root: Option<&Path>) -> bool {
    match target {
        Target::Session(session) => {
            fs::read_to_string(format!("/proc/{pid}/sessionid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                == Some(session)
        }
        Target::Cgroup(id) => cgroup_root
            .and_then(|root| cgroup_of(root, pid))
            .is_some_and(|(_, ino)| ino == id),
    }
}

/// SIGKILLs every live process of `target` but this agent, and returns their pids. Each
/// process is pinned by a pidfd before it is checked, so a pid recycled between the check
/// and the signal cannot be hit.
fn kill_live(target: Target, cgroup_root: Option<&Path>) -> Vec<u32> {
    let me = std::process::id();
    let mut killed = Vec::new();
    for _ in 0..KILL_PASSES {
        let mut found = false;
        let Ok(entries) = fs::read_dir("/proc") else {
            break;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || !belongs(pid, target, cgroup_root) {
                continue;
            }
            // SAFETY: plain syscalls; the fd is owned below.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            let Ok(fd) = i32::try_from(fd) else { continue };
            if fd < 0 {
                continue;
            }
            // SAFETY: pidfd_open returned a new fd that nothing else owns.
            let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            if !belongs(pid, target, cgroup_root) {
                continue;
            }
            // SAFETY: a valid pidfd, no siginfo, no flags.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if sent == 0 && !killed.contains(&pid) {
                killed.push(pid);
                found = true;
            }
        }
        if !found {
            break;
        }
    }
    killed
}

/// Shared by the attribute stage and the expiry clock.
pub type Shared = Arc<Mutex<Enforcer>>;

pub fn lock(enforcer: &Shared) -> std::sync::MutexGuard<'_, Enforcer> {
    enforcer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The expiry clock: adopts each grant view the ship stage receives and ends grants on
/// time by this host's clock, whether or not the collector is reachable. Kill events go to
/// the attribute stage like any other event. Ends once the decode stage has hung up.
pub async fn clock(
    enforcer: Shared,
    mut views: watch::Receiver<Option<GrantView>>,
    out: mpsc::WeakSender<Vec<Event>>,
) {
    let mut views_open = true;
    loop {
        let now = now_unix_ns();
        let wait = lock(&enforcer)
            .next_end()
            .map_or(TICK, |end| Duration::from_nanos(end.saturating_sub(now)))
            .min(TICK);
        tokio::select! {
            changed = views.changed(), if views_open => match changed {
                Ok(()) => {
                    if let Some(view) = views.borrow_and_update().clone() {
                        lock(&enforcer).update(view, now_unix_ns());
                    }
                }
                Err(_) => views_open = false,
            },
            () = tokio::time::sleep(wait) => {}
        }
        let events = tokio::task::block_in_place(|| lock(&enforcer).sweep(now_unix_ns()));
        let Some(out) = out.upgrade() else { return };
        if !events.is_empty() && out.send(events).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::{IdentitySelector, Policy};

    use super::*;

    const HOST: &str = "host-a";
    const T0: u64 = 1_800_000_000_000_000_000;
    const SEC: u64 = 1_000_000_000;
    /// An audit session no process on the host has, so kills find nothing to kill.
    const SESSION: u32 = u32::MAX - 7;

    fn alice() -> Identity {
        Identity {
            kind: IdentityKind::Human,
            name: "alice".into(),
            reason: None,
            grant: None,
        }
    }

    fn exec(euid: u32) -> Event {
        Event {
            ktime_ns: 1,
            process: Some(Process {
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
            }),
            body: Body::Exec {
                filename: "/usr/bin/sudo".into(),
                filename_truncated: false,
                argv: vec![b"sudo".to_vec(), b"-n".to_vec(), b"id".to_vec()],
                argv_truncated: false,
                argv_unreadable: false,
                result: 0,
            },
        }
    }

    fn grant(id: &str, hosts: &[&str], on_expiry: OnExpiry) -> Grant {
        Grant {
            id: id.into(),
            identity: Some(IdentitySelector {
                kind: proto::v1::identity::Kind::Human.into(),
                name: "alice".into(),
            }),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            not_before_unix_nano: T0,
            expires_at_unix_nano: T0 + 10 * SEC,
            on_expiry: on_expiry.into(),
            ..Grant::default()
        }
    }

    fn view(grants: Vec<Grant>, mode: Mode) -> GrantView {
        GrantView {
            grants,
            policy: Some(Policy {
                mode: mode.into(),
                root_exec: true,
                guarded: Vec::new(),
            }),
            issued_unix_nano: T0,
        }
    }

    fn enforcer(fail_closed: Option<FailClosed>) -> Enforcer {
        Enforcer::new(HOST.into(), None, None, fail_closed)
    }

    #[test]
    fn root_exec_without_a_grant_is_a_violation() {
        let mut e = enforcer(None);
        e.update(view(Vec::new(), Mode::Alert), T0);
        let j = e.judge(&exec(0), Some(&alice()), T0 + SEC);
        assert_eq!(j.grant, None);
        assert!(
            matches!(
                &j.follow[..],
                [Event {
                    body: Body::Violation {
                        rule: "root_exec",
                        action: "alert",
                        detail
                    },
                    ..
                }] if detail == "sudo -n id"
            ),
            "{:?}",
            j.follow
        );
        assert!(
            e.judge(&exec(1000), Some(&alice()), T0 + SEC)
                .follow
                .is_empty(),
            "an unprivileged exec needs no grant"
        );
    }

    #[test]
    fn kill_mode_kills_the_violating_session() {
        let mut e = enforcer(None);
        e.update(view(Vec::new(), Mode::Kill), T0);
        let j = e.judge(&exec(0), Some(&alice()), T0 + SEC);
        let [violation, kill] = &j.follow[..] else {
            panic!("{:?}", j.follow)
        };
        assert!(matches!(
            violation.body,
            Body::Violation { action: "kill", .. }
        ));
        assert!(
            matches!(&kill.body, Body::Kill(k) if k.reason == "violation"
                && k.target == Some(Target::Session(SESSION)) && k.by == Killer::Agent),
            "{kill:?}"
        );
    }

    #[test]
    fn a_grant_covers_its_identity_on_its_hosts_while_active() {
        let mut e = enforcer(None);
        e.update(
            view(
                vec![
                    grant("g-other-host", &["host-b"], OnExpiry::Kill),
                    grant("g-1", &[HOST], OnExpiry::Kill),
                ],
                Mode::Alert,
            ),
            T0,
        );
        let j = e.judge(&exec(0), Some(&alice()), T0 + SEC);
        assert_eq!(j.grant.as_deref(), Some("g-1"));
        assert!(j.follow.is_empty());
        let before = e.judge(&exec(0), Some(&alice()), T0 - 1);
        assert_eq!(before.grant, None, "not before not_before");
        assert_eq!(before.follow.len(), 1);
        let bob = Identity {
            name: "bob".into(),
            ..alice()
        };
        assert_eq!(e.judge(&exec(0), Some(&bob), T0 + SEC).grant, None);
    }

    #[test]
    fn an_ended_grant_kills_the_sessions_that_used_it() {
        let mut e = enforcer(None);
        e.update(
            view(vec![grant("g-1", &[], OnExpiry::Kill)], Mode::Alert),
            T0,
        );
        e.judge(&exec(0), Some(&alice()), T0 + SEC);
        assert_eq!(e.next_end(), Some(T0 + 10 * SEC));
        assert!(e.sweep(T0 + 10 * SEC - 1).is_empty(), "not yet");
        let kills = e.sweep(T0 + 10 * SEC);
        let [
            Event {
                body: Body::Kill(kill),
                ..
            },
        ] = &kills[..]
        else {
            panic!("{kills:?}")
        };
        assert_eq!(
            (kill.grant_id.as_str(), kill.reason, kill.target),
            ("g-1", "expired", Some(Target::Session(SESSION)))
        );
        assert!(e.sweep(T0 + 20 * SEC).is_empty(), "a grant ends once");
        assert_eq!(e.next_end(), None);
    }

    #[test]
    fn a_grant_missing_from_a_new_view_is_revoked() {
        let mut e = enforcer(None);
        e.update(
            view(vec![grant("g-1", &[], OnExpiry::Kill)], Mode::Alert),
            T0,
        );
        e.judge(&exec(0), Some(&alice()), T0 + SEC);
        e.update(view(Vec::new(), Mode::Alert), T0 + 2 * SEC);
        let kills = e.sweep(T0 + 2 * SEC);
        assert!(
            matches!(&kills[..], [Event { body: Body::Kill(k), .. }] if k.reason == "revoked"),
            "{kills:?}"
        );
    }

    #[test]
    fn a_stale_view_fails_closed() {
        let fail = FailClosed {
            after: Duration::from_mins(1),
            kill: false,
        };
        let mut e = enforcer(Some(fail));
        let j = e.judge(&exec(0), Some(&alice()), T0);
        assert!(
            matches!(
                &j.follow[..],
                [Event {
                    body: Body::Violation {
                        rule: "stale_grants",
                        ..
                    },
                    ..
                }]
            ),
            "no view at all: {:?}",
            j.follow
        );
        e.update(
            view(vec![grant("g-1", &[], OnExpiry::Kill)], Mode::Alert),
            T0,
        );
        assert_eq!(
            e.judge(&exec(0), Some(&alice()), T0 + SEC).grant.as_deref(),
            Some("g-1"),
            "a fresh view's grant covers"
        );
        e.update(
            GrantView {
                issued_unix_nano: T0,
                ..view(
                    vec![Grant {
                        expires_at_unix_nano: T0 + 3600 * SEC,
                        ..grant("g-1", &[], OnExpiry::Kill)
                    }],
                    Mode::Alert,
                )
            },
            T0,
        );
        let late = e.judge(&exec(0), Some(&alice()), T0 + 61 * SEC);
        assert!(
            matches!(
                &late.follow[..],
                [Event {
                    body: Body::Violation {
                        rule: "stale_grants",
                        ..
                    },
                    ..
                }]
            ),
            "{:?}",
            late.follow
        );
    }
}
