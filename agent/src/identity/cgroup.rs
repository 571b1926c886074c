//! cgroup v2 paths and ids: what a process without a loginuid is attributed by, and what a
//! non-human identity's kill is aimed at.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// cgroup v2 ids (directory inode numbers) to paths, rescanned when an id is missing.
pub struct CgroupPaths {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    scanned: Option<Instant>,
}

/// A missing id triggers a rescan at most this often, so a burst of events from unknown
/// cgroups does not turn into a burst of tree walks.
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);

impl CgroupPaths {
    #[must_use]
    pub fn discover() -> Self {
        Self {
            root: cgroup2_mount(),
            paths: HashMap::new(),
            scanned: None,
        }
    }

    /// The path of cgroup `id`, which process `pid` was in: read from the process first (a
    /// cgroup made a moment ago is found at once), else from a rescan of the tree.
    pub fn path(&mut self, id: u64, pid: u32) -> Option<&str> {
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

/// The directory of the cgroup whose id (inode) is `id`, under the hierarchy at `root`.
pub(crate) fn cgroup_dir(root: &Path, id: u64) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    None
}

/// Every process in the cgroup at `dir` and the cgroups below it.
pub(crate) fn subtree_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    pids
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

    #[test]
    fn the_cgroup_root_resolves_to_slash() {
        let mut paths = CgroupPaths::discover();
        let root = paths.root.clone().expect("a cgroup2 mount");
        let ino = fs::metadata(&root).unwrap().ino();
        assert_eq!(paths.path(ino, 0), Some("/"));
    }
}
