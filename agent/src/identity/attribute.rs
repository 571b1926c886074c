//! The attribute stage: who is behind an event, and the audit session it belongs to. A
//! registration (see `registry`) for the event's session or cgroup wins; then a human is
//! known by loginuid, which survives sudo and su; a process without one is attributed to
//! its container or systemd unit from its cgroup path; otherwise the identity is unknown,
//! with the reason.

use std::{collections::HashMap, ffi::CStr, sync::Arc};

use proto::v1::identity::Kind;
use tracing::debug_span;

use super::{
    Identity,
    cgroup::CgroupPaths,
    proctable::{ProcessTable, SessionRoot},
    registry::Registry,
};
use crate::capture::event::{Event, Process};

/// An event and who is behind it.
#[derive(Clone, Debug)]
pub struct Attributed {
    pub event: Event,
    /// `None` for records no process made (gaps, kills).
    pub identity: Option<Arc<Identity>>,
    /// The process the event's audit session began in.
    pub root: Option<SessionRoot>,
    /// The grant the judge found covering the event (a registration's own grant is in
    /// `identity`).
    pub grant: Option<Arc<str>>,
    /// Its process is, or descends from, a setuid-root exec in its login session.
    pub elevated: bool,
}

impl Attributed {
    /// An event no process made.
    #[must_use]
    pub fn bare(event: Event) -> Self {
        Self {
            event,
            identity: None,
            root: None,
            grant: None,
            elevated: false,
        }
    }
}

/// The stage: the process table, kept from the events themselves, and the identities.
pub struct Attribute {
    table: ProcessTable,
    attributor: Attributor,
}

impl Attribute {
    #[must_use]
    pub fn new(table: ProcessTable, registry: Arc<Registry>) -> Self {
        Self {
            table,
            attributor: Attributor::new(registry),
        }
    }

    /// Attributes one batch, in order.
    pub fn process(&mut self, events: Vec<Event>) -> Vec<Attributed> {
        let _span = debug_span!("batch", events = events.len()).entered();
        let mut out = Vec::with_capacity(events.len());
        for mut event in events {
            let raw = event.process.clone();
            if let Some(change) = self.table.keep_birth_session(&mut event) {
                // The change is recorded with the process as the kernel saw it, and judged
                // like the process's other activity: by the session it was born in.
                let mut item = self.attribute(Event {
                    ktime_ns: event.ktime_ns,
                    process: event.process.clone(),
                    body: change,
                });
                item.event.process = raw;
                out.push(item);
            }
            out.push(self.attribute(event));
        }
        out
    }

    fn attribute(&mut self, mut event: Event) -> Attributed {
        let root = self.table.observe(&mut event);
        let identity = event.process.as_ref().map(|p| self.attributor.identify(p));
        let elevated = event
            .process
            .as_ref()
            .is_some_and(|p| self.table.elevated(p.tgid));
        Attributed {
            event,
            identity,
            root,
            grant: None,
            elevated,
        }
    }
}

/// What an identity depends on: the loginuid when there is one, else the cgroup. cgroup v2
/// ids are not reused within a boot, so a resolved identity never goes stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Login(u32),
    Cgroup(u64),
}

/// Identities kept before the cache is cleared (short-lived cgroups would otherwise grow it
/// without bound).
const CACHE_MAX: usize = 65_536;

/// Resolves identities, caching them and the cgroup paths behind them.
struct Attributor {
    cache: HashMap<Key, Arc<Identity>>,
    cgroups: CgroupPaths,
    registry: Arc<Registry>,
}

impl Attributor {
    fn new(registry: Arc<Registry>) -> Self {
        Self {
            cache: HashMap::new(),
            cgroups: CgroupPaths::discover(),
            registry,
        }
    }

    fn identify(&mut self, process: &Process) -> Arc<Identity> {
        if let Some(registered) = self.registry.lookup(process.sessionid, process.cgroup_id) {
            return registered;
        }
        let key = process
            .loginuid
            .map_or(Key::Cgroup(process.cgroup_id), Key::Login);
        if let Some(identity) = self.cache.get(&key) {
            return Arc::clone(identity);
        }
        match self.resolve(process) {
            Ok(identity) => {
                if self.cache.len() >= CACHE_MAX {
                    self.cache.clear();
                }
                let identity = Arc::new(identity);
                self.cache.insert(key, Arc::clone(&identity));
                identity
            }
            // Not cached: a later rescan of the cgroup tree may still resolve it.
            Err(missing) => Arc::new(missing),
        }
    }

    /// The identity for `process`, or (as the error) an unknown one that a later rescan of
    /// the cgroup tree may still resolve.
    fn resolve(&mut self, process: &Process) -> Result<Identity, Identity> {
        if let Some(uid) = process.loginuid {
            return Ok(named(Kind::Human, user_name(uid)));
        }
        let Some(path) = self.cgroups.path(process.cgroup_id, process.tgid) else {
            return Err(unknown(format!(
                "no loginuid, and cgroup {} is not in the cgroup v2 tree",
                process.cgroup_id
            )));
        };
        if let Some(id) = container_id(path) {
            return Ok(named(Kind::Workload, id.to_owned()));
        }
        if let Some(unit) = systemd_unit(path) {
            return Ok(named(Kind::Service, unit.to_owned()));
        }
        Ok(unknown(format!(
            "no loginuid, and cgroup {path} names no unit or container"
        )))
    }
}

fn named(kind: Kind, name: String) -> Identity {
    Identity {
        kind,
        name,
        reason: None,
        grant: None,
    }
}

fn unknown(reason: String) -> Identity {
    Identity {
        kind: Kind::Unknown,
        name: String::new(),
        reason: Some(reason),
        grant: None,
    }
}

/// The account name for `uid` from the system's user database, or `uid:N` when it has none.
fn user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers are valid for the call; `found` points into `pwd` on success.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &raw mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &raw mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return format!("uid:{uid}");
    }
    // SAFETY: on success pw_name is a NUL-terminated string inside `buf`.
    unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// The deepest path component that names a systemd service, such as `nginx.service` in
/// `/system.slice/nginx.service`.
#[must_use]
pub fn systemd_unit(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|c| c.len() > ".service".len() && c.ends_with(".service"))
}

/// The container id in a cgroup path: docker (`/docker/ID`, `docker-ID.scope`),
/// containerd and CRI-O (`cri-containerd-ID.scope`, `crio-ID.scope`), podman
/// (`libpod-ID.scope`), and kubepods with the cgroupfs driver (`/kubepods/.../podUID/ID`).
#[must_use]
pub fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|component| {
        let id = component.strip_suffix(".scope").unwrap_or(component);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|prefix| id.strip_prefix(prefix))
            .unwrap_or(id);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c2d1e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";

    #[test]
    fn container_ids_in_each_runtime_form() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods/burstable/pod8d2f/{ID}"),
        ] {
            assert_eq!(container_id(&path), Some(ID), "{path}");
        }
        assert_eq!(container_id("/system.slice/docker.service"), None);
        assert_eq!(container_id("/docker/not-an-id"), None);
    }

    #[test]
    fn units_are_the_deepest_service_component() {
        assert_eq!(
            systemd_unit("/system.slice/nginx.service"),
            Some("nginx.service")
        );
        assert_eq!(
            systemd_unit("/system.slice/app.service/worker"),
            Some("app.service")
        );
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
        assert_eq!(systemd_unit("/.service"), None);
    }

    #[test]
    fn user_names_come_from_the_user_database() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "uid:4000000000");
    }
}
