//! Harness for the kernel and end-to-end tiers: runs the real agent binary, reads its JSON
//! lines, and drives real processes on real ptys. Nothing here is mocked.
#![expect(
    clippy::missing_panics_doc,
    reason = "a test harness reports failure by panicking"
)]

pub mod agent;
pub mod collector;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod notify;
pub mod ocsf;
pub mod operator;
pub mod pki;
pub mod postgres;
pub mod pty;
pub mod python;
pub mod ssh;

use std::{
    fs,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Root of the workspace this crate lives in.
#[must_use]
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// A binary of the workspace: the path in `var`, else the debug build of `name` (in
/// `CARGO_TARGET_DIR` when that is set, as cargo builds there).
#[must_use]
pub fn binary(var: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(
        || {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace_root().join("target"), PathBuf::from)
                .join("debug")
                .join(name)
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// Whether a privileged test can run. Without root it is skipped with a message, except under
/// `CI=true`, where a privileged test that cannot run is a failure.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (CAP_BPF, CAP_PERFMON) and CI=true forbids skipping it"
    );
    eprintln!("skipping {test}: needs root");
    false
}

/// A directory of one test's own under the system temp dir, removed when dropped unless the
/// test is failing (what a failed test leaves is what tells why).
pub struct Scratch(PathBuf);

impl Scratch {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(marker(tag));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create scratch dir {}: {e}", dir.display()));
        Self(dir)
    }

    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for the failure", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// What `read` returns once `done` holds of it, or its last answer after `within`: for
/// state another process makes a moment after the signal a test waited on. The caller
/// asserts on the answer, so a timeout fails with what was seen.
pub fn eventually<T>(
    within: Duration,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let answer = read();
        if done(&answer) || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A string no other process on the host will use, to find one test's events.
#[must_use]
pub fn marker(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "recorder-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A test pattern in which every 4 KiB block names its own index, so any captured block can
/// be checked in place even when others were lost.
#[must_use]
pub fn block_pattern(blocks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * 4096);
    for b in 0..blocks {
        let start = out.len();
        let mut line = 0;
        while out.len() - start < 4096 {
            let text = format!("block {b:06} line {line:03} the quick brown fox\n");
            let room = 4096 - (out.len() - start);
            out.extend_from_slice(&text.as_bytes()[..text.len().min(room)]);
            line += 1;
        }
    }
    out
}

/// Where the cgroup v2 hierarchy is mounted.
#[must_use]
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].into())
        })
        .expect("a cgroup2 mount")
}

/// A cgroup v2 directory made for one test, removed when dropped.
pub struct TestCgroup {
    pub dir: PathBuf,
}

impl TestCgroup {
    /// Creates `name` directly under the cgroup v2 root.
    #[must_use]
    pub fn create(name: &str) -> Self {
        let dir = cgroup2_root().join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        Self { dir }
    }

    /// The cgroup id the kernel reports: the directory's inode number.
    #[must_use]
    pub fn id(&self) -> u64 {
        fs::metadata(&self.dir).unwrap().ino()
    }

    /// Makes `cmd` join this cgroup before it execs.
    pub fn enter(&self, cmd: &mut Command) {
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: only open/write/close between fork and exec.
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, "0"));
        }
    }
}

impl Drop for TestCgroup {
    /// Kills whatever a failed test left in it, so the directory can go.
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// A mount made for one test (`mount ARGS... TARGET`), unmounted however the test ends.
pub struct Mount {
    pub target: PathBuf,
}

/// Runs `mount ARGS... TARGET`.
fn mount(args: &[&str], target: &std::path::Path) {
    let status = Command::new("mount")
        .args(args)
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success(), "mount {args:?} {}", target.display());
}

impl Mount {
    fn new(args: &[&str], target: &std::path::Path) -> Self {
        mount(args, target);
        Self {
            target: target.to_path_buf(),
        }
    }

    /// A tmpfs of `size` (`1m`) at `dir`, created if need be, mode 0700.
    #[must_use]
    pub fn tmpfs(dir: &std::path::Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let options = format!("size={size},mode=0700");
        Self::new(&["-t", "tmpfs", "-o", &options, "recorder-test"], dir)
    }

    /// `source` bind-mounted over `target`.
    #[must_use]
    pub fn bind(source: &std::path::Path, target: &std::path::Path) -> Self {
        Self::new(&["--bind", source.to_str().unwrap()], target)
    }

    /// Gives the tmpfs a new size.
    pub fn resize(&self, size: &str) {
        mount(&["-o", &format!("remount,size={size}")], &self.target);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}

/// An audit login uid of this test process's own (`uid:N` names it, as no account has it),
/// so its marker execs are found by identity however many other execs the host makes.
#[must_use]
pub fn marker_uid() -> u32 {
    3_000_000_000 + std::process::id() % 1_000_000
}

/// Runs `/bin/true ARG` under `marker_uid()`, and returns the identity to find it by.
#[must_use]
pub fn mark(arg: &str) -> String {
    let mut cmd = Command::new("/bin/true");
    cmd.arg(arg);
    with_loginuid(&mut cmd, Some(marker_uid()));
    assert!(cmd.status().unwrap().success());
    format!("uid:{}", marker_uid())
}

/// Makes `cmd` run with the given audit loginuid (`None` clears it), as `pam_loginuid` sets it
/// at login.
pub fn with_loginuid(cmd: &mut Command, loginuid: Option<u32>) {
    let value = loginuid.unwrap_or(u32::MAX).to_string();
    // SAFETY: only open/write/close between fork and exec.
    unsafe {
        cmd.pre_exec(move || fs::write("/proc/self/loginuid", &value));
    }
}
