//! The attribute stage: who is behind an event. A registration (see `registry`) for the
//! event's session or cgroup wins; then a human is known by loginuid, which survives sudo
//! and su; a process without one is attributed to its container or systemd unit from its
//! cgroup path; otherwise the identity is unknown, with the reason.

use std::{
    collections::HashMap,
    ffi::CStr,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use std::sync::Arc;

use crate::{event::Process, registry::Registry};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    Human,
    Service,
    Workload,
    Registered,
    Unknown,
}

impl IdentityKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Human => "human",
            Self::Service => "service",
            Self::Workload => "workload",
            Self::Registered => "registered",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityKind,
    /// User name, unit name or container id; empty when unknown.
    pub name: String,
    /// Why the identity is unknown.
    pub reason: Option<String>,
    /// The grant a registered identity acts under.
    pub grant: Option<String>,
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
pub struct Attributor {
    cache: HashMap<Key, Identity>,
    cgroups: CgroupPaths,
    /// Returned, uncached, while a cgroup is not yet in the scanned tree.
    pending: Identity,
    registry: Arc<Registry>,
    /// The last registered identity returned.
    registered: Identity,
}

impl Attributor {
    #[must_use]
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            cache: HashMap::new(),
            cgroups: CgroupPaths::discover(),
            pending: unknown(String::new()),
            registry,
            registered: unknown(String::new()),
        }
    }

    pub fn identify(&mut self, process: &Process) -> &Identity {
        if let Some(registered) = self.registry.lookup(process.sessionid, process.cgroup_id) {
            self.registered = Identity {
                kind: IdentityKind::Registered,
                name: registered.identity,
                reason: None,
                grant: registered.grant,
            };
            return &self.registered;
        }
        let key = process
            .loginuid
            .map_or(Key::Cgroup(process.cgroup_id), Key::Login);
        if !self.cache.contains_key(&key) {
            match self.resolve(process) {
                Ok(identity) => {
                    if self.cache.len() >= CACHE_MAX {
                        self.cache.clear();
                    }
                    self.cache.insert(key, identity);
                }
                Err(missing) => {
                    self.pending = missing;
                    return &self.pending;
                }
            }
        }
        &self.cache[&key]
    }

    /// The identity for `process`, or (as the error) an unknown one that a later rescan of
    /// the cgroup tree may still resolve.
    fn resolve(&mut self, process: &Process) -> Result<Identity, Identity> {
        if let Some(uid) = process.loginuid {
            return Ok(named(IdentityKind::Human, user_name(uid)));
        }
        let Some(path) = self.cgroups.path(process.cgroup_id, process.tgid) else {
            return Err(unknown(format!(
                "no loginuid, and cgroup {} is not in the cgroup v2 tree",
                process.cgroup_id
            )));
        };
        if let Some(id) = container_id(path) {
            return Ok(named(IdentityKind::Workload, id.to_owned()));
        }
        if let Some(unit) = systemd_unit(path) {
            return Ok(named(IdentityKind::Service, unit.to_owned()));
        }
        Ok(unknown(format!(
            "no loginuid, and cgroup {path} names no unit or container"
        )))
    }
}

fn named(kind: IdentityKind, name: String) -> Identity {
    Identity {
        kind,
        name,
        reason: None,
        grant: None,
    }
}

fn unknown(reason: String) -> Identity {
    Identity {
        kind: IdentityKind::Unknown,
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

/// cgroup v2 ids (directory inode numbers) to paths, rescanned when an id is missing.
struct CgroupPaths {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    scanned: Option<Instant>,
}

/// A missing id triggers a rescan at most this often, so a burst of events from unknown
/// cgroups does not turn into a burst of tree walks.
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);

impl CgroupPaths {
    fn discover() -> Self {
        Self {
            root: cgroup2_mount(),
            paths: HashMap::new(),
            scanned: None,
        }
    }

    /// The path of cgroup `id`, which process `pid` was in: read from the process first (a
    /// cgroup made a moment ago is found at once), else from a rescan of the tree.
    fn path(&mut self, id: u64, pid: u32) -> Option<&str> {
        if !self.paths.contains_key(&id)
            && let Some(path) = self.of_process(id, pid)
        {
            self.paths.insert(id, path);
        }
        if !self.paths.contains_key(&id)
            && self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL)
        {
            self.rescan();
        }
        self.paths.get(&id).map(String::as_str)
    }

    /// The cgroup v2 path of process `pid`, if it is still cgroup `id` (the process may
    /// have moved or gone since the event).
    fn of_process(&self, id: u64, pid: u32) -> Option<String> {
        let (path, ino) = cgroup_of(self.root.as_deref()?, pid)?;
        (ino == id).then_some(path)
    }

    fn rescan(&mut self) {
        self.scanned = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(&root)
                .map_or_else(|_| String::new(), |p| p.to_string_lossy().into_owned());
            self.paths.insert(meta.ino(), format!("/{rel}"));
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

/// Process `pid`'s cgroup v2 path (from `/proc/PID/cgroup`) and id, under the hierarchy
/// mounted at `root`.
pub(crate) fn cgroup_of(root: &Path, pid: u32) -> Option<(String, u64)> {
    let procs = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = procs.lines().find_map(|l| l.strip_prefix("0::"))?;
    let meta = fs::metadata(root.join(path.trim_start_matches('/'))).ok()?;
    Some((path.to_owned(), meta.ino()))
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts).
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| Path::new(dir).to_path_buf())
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

    #[test]
    fn the_cgroup_root_resolves_to_slash() {
        let mut paths = CgroupPaths::discover();
        let root = paths.root.clone().expect("a cgroup2 mount");
        let ino = fs::metadata(&root).unwrap().ino();
        assert_eq!(paths.path(ino, 0), Some("/"));
    }
}
