//! The systemd units in `deploy/systemd`: `systemd-analyze verify` accepts them as installed
//! (the binaries under the names the units start), their exposure scores stay at or below
//! those docs/deploy.md records, and under a real systemd, PID 1 of a PID namespace of its
//! own, both start, say they are ready, and run with the privileges and sandbox the units
//! give; a wedged agent is restarted by its watchdog. The last needs root; under `CI=true` a
//! run without root fails instead of skipping.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use tests::{Scratch, TestCgroup, marker, privileged, workspace_root};

const AGENT: &str = "recorder-agent.service";
const COLLECTOR: &str = "recorder-collector.service";

/// The units that pull in, order, or stand beside ours, copied from the host's systemd.
const HOST_UNITS: &str = "/usr/lib/systemd/system";

fn unit(name: &str) -> PathBuf {
    workspace_root().join("deploy/systemd").join(name)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (is systemd installed? `cargo xtask setup`)"))
}

/// `path` at `to`: a hard link where the filesystem allows one (the debug binaries are
/// large), else a copy.
fn place(path: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    if fs::hard_link(path, to).is_err() {
        fs::copy(path, to).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
    }
}

/// A root directory as packaging installs it: the binaries under the names the units start,
/// the units, and the host's systemd units and the commands the units name besides ours.
fn installed_root(dir: &Path) {
    place(&tests::agent::binary(), &dir.join("usr/bin/recorder-agent"));
    place(
        &tests::binary("RECORDER_COLLECTOR_BIN", "collector"),
        &dir.join("usr/bin/recorder-collector"),
    );
    place(Path::new("/bin/mkdir"), &dir.join("bin/mkdir"));
    let system = dir.join("etc/systemd/system");
    fs::create_dir_all(&system).unwrap();
    for name in [AGENT, COLLECTOR] {
        fs::copy(unit(name), system.join(name)).unwrap();
    }
    let lib = dir.join("usr/lib/systemd");
    fs::create_dir_all(&lib).unwrap();
    let copied = run(Command::new("cp").arg("-a").arg(HOST_UNITS).arg(&lib));
    assert!(copied.status.success(), "copy {HOST_UNITS}");
}

/// `systemd-analyze verify` finds nothing to say: the units parse, every setting is known,
/// every command they run exists and every unit they need is there.
#[test]
fn systemd_analyze_verifies_both_units_as_installed() {
    let root = Scratch::new("deploy-root");
    installed_root(&root);
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args([AGENT, COLLECTOR]));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}

/// An exposure level in tenths: `3.0` is 30.
fn tenths(text: &str) -> u32 {
    let (whole, tenth) = text.split_once('.').unwrap_or((text, "0"));
    whole.parse::<u32>().unwrap() * 10 + tenth.parse::<u32>().unwrap()
}

/// What docs/deploy.md records for `name`, from its `| name | score |` row (other tables
/// there have rows for the unit too).
fn recorded_exposure(name: &str) -> u32 {
    let doc = fs::read_to_string(workspace_root().join("docs/deploy.md")).unwrap();
    let prefix = format!("| `{name}` | ");
    let row = doc
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .find(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("docs/deploy.md has no row {prefix}…"));
    tenths(row.split_whitespace().next().unwrap())
}

/// The overall exposure level `systemd-analyze security` gives the unit file.
fn exposure(name: &str) -> u32 {
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit(name)));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure level:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (_, score) = line.rsplit_once(": ").unwrap();
    tenths(score.split_whitespace().next().unwrap())
}

/// A change to a unit that weakens its sandbox fails here; one that hardens it should lower
/// the score docs/deploy.md records.
#[test]
fn exposure_stays_at_or_below_what_docs_deploy_records() {
    for name in [AGENT, COLLECTOR] {
        let (now, recorded) = (exposure(name), recorded_exposure(name));
        assert!(
            now <= recorded,
            "{name}: exposure {now} tenths, above the {recorded} docs/deploy.md records"
        );
    }
}

/// `CAP_DAC_OVERRIDE`, `CAP_KILL`, `CAP_SYS_PTRACE`, `CAP_PERFMON`, `CAP_BPF`: the agent
/// unit's bounding set.
const AGENT_CAPS: u64 = 1 << 1 | 1 << 5 | 1 << 19 | 1 << 38 | 1 << 39;

/// A uid for the collector's `recorder` user no account on the host has.
fn free_uid() -> u32 {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    (61_000..65_000)
        .find(|uid| {
            !passwd
                .lines()
                .any(|l| l.split(':').nth(2) == Some(&uid.to_string()))
        })
        .unwrap()
}

/// A systemd, PID 1 of new PID, mount, UTS, IPC and cgroup namespaces, seeing the host's
/// filesystems except: a cgroup hierarchy rooted at a cgroup of its own, an empty `/run`,
/// `/var/lib`, `/var/spool` and `/tmp`, only the units it needs (ours, installed, and a few
/// targets of the host's), the binaries in `/usr/bin` under the units' names, a `recorder`
/// user and the daemons' settings in `/etc` (overlays, so the host's files stay as they are).
struct Systemd {
    unshare: Child,
    pid1: u32,
    cgroup: Option<TestCgroup>,
    cgroup_dir: PathBuf,
    pins: PathBuf,
    dir: Scratch,
}

impl Systemd {
    fn boot() -> Self {
        let dir = Scratch::new("pid1");
        let pins = Path::new("/sys/fs/bpf").join(marker("pid1"));
        let usr_bin = dir.join("usr-bin");
        place(&tests::agent::binary(), &usr_bin.join("recorder-agent"));
        place(
            &tests::binary("RECORDER_COLLECTOR_BIN", "collector"),
            &usr_bin.join("recorder-collector"),
        );
        let etc = dir.join("etc");
        fs::create_dir_all(etc.join("recorder")).unwrap();
        let uid = free_uid();
        for (file, line) in [
            (
                "passwd",
                format!("recorder:x:{uid}:{uid}::/var/lib/recorder:/bin/false"),
            ),
            ("group", format!("recorder:x:{uid}:")),
        ] {
            let host = fs::read_to_string(Path::new("/etc").join(file)).unwrap();
            fs::write(etc.join(file), format!("{host}{line}\n")).unwrap();
        }
        // Spooling with no collector to ship to, as at boot before the network; pins of
        // this test's own, so they cannot collide with another agent's.
        fs::write(
            etc.join("recorder/agent.toml"),
            format!(
                "spool = \"/var/spool/recorder\"\nbpf-dir = \"{}\"\n",
                pins.display()
            ),
        )
        .unwrap();
        fs::write(
            etc.join("recorder/collector.toml"),
            "listen = \"127.0.0.1:0\"\ninsecure-plaintext = true\n",
        )
        .unwrap();
        let units = dir.join("units");
        fs::create_dir_all(&units).unwrap();
        for name in [
            "basic.target",
            "sysinit.target",
            "local-fs.target",
            "swap.target",
            "network.target",
            "network-online.target",
            "shutdown.target",
            "sys-kernel-tracing.mount",
        ] {
            fs::copy(Path::new(HOST_UNITS).join(name), units.join(name)).unwrap();
        }
        fs::write(
            units.join("multi-user.target"),
            format!("[Unit]\nWants={AGENT} {COLLECTOR}\n"),
        )
        .unwrap();
        let script = dir.join("pid1.sh");
        fs::write(&script, pid1_script(&dir)).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

        let cgroup = TestCgroup::create(&marker("pid1"));
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--ipc",
            "--cgroup",
            "--mount-proc",
        ])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("pid1.log")).unwrap());
        cgroup.enter(&mut cmd);
        let unshare = cmd.spawn().expect("start unshare");
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid1 = loop {
            if let Some(pid) = fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "unshare started no PID 1");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            unshare,
            pid1,
            cgroup_dir: cgroup.dir.clone(),
            cgroup: Some(cgroup),
            pins,
            dir,
        }
    }

    /// Runs `args` inside: in its mount and PID namespaces, where its `systemctl` finds it.
    fn inside(&self, args: &[&str]) -> String {
        let out = run(Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-m", "-p", "--"])
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn property(&self, unit: &str, name: &str) -> String {
        self.inside(&["systemctl", "show", "--value", "-p", name, unit])
            .trim()
            .to_owned()
    }

    /// The unit's logs (no journal runs inside: they go to files in its `/run`).
    fn log(&self, unit: &str) -> String {
        let status = self.inside(&["systemctl", "status", "--no-pager", unit]);
        let log = self.inside(&["tail", "-n", "30", &format!("/run/{unit}.log")]);
        let pid1 = fs::read_to_string(self.dir.join("pid1.log")).unwrap_or_default();
        format!("{status}\n{log}\nbefore systemd:\n{pid1}")
    }

    /// Waits until `unit` is active, which a `Type=notify` unit is once it sent READY=1.
    fn wait_active(&self, unit: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.property(unit, "ActiveState") != "active" {
            assert!(
                Instant::now() < deadline,
                "{unit} not active within {within:?}:\n{}",
                self.log(unit)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The unit's main process, seen from the host: its pid and `/proc/PID/status`.
    fn main_status(&self, unit: &str) -> (u32, String) {
        let inner = self.property(unit, "MainPID");
        let procs = self
            .cgroup_dir
            .join("system.slice")
            .join(unit)
            .join("cgroup.procs");
        fs::read_to_string(&procs)
            .unwrap_or_default()
            .lines()
            .find_map(|pid| {
                let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                // NSpid: its pid here, then in each namespace down to systemd's.
                let main = field(&status, "NSpid").split_whitespace().last() == Some(&inner);
                main.then_some((pid.parse().ok()?, status))
            })
            .unwrap_or_else(|| panic!("no main process of {unit}:\n{}", self.log(unit)))
    }
}

impl Drop for Systemd {
    /// Kills everything inside at once, then removes the cgroups systemd made under the
    /// test's, deepest first, and the agent's pins.
    fn drop(&mut self) {
        let Some(cgroup) = self.cgroup.take() else {
            return;
        };
        let _ = fs::write(cgroup.dir.join("cgroup.kill"), "1");
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let mut dirs = Vec::new();
        let mut next = vec![cgroup.dir.clone()];
        while let Some(dir) = next.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(entry.path());
                }
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().skip(1).rev() {
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        drop(cgroup);
        let _ = fs::remove_dir_all(&self.pins);
    }
}

/// What PID 1 runs before it becomes systemd: the private view `Systemd` describes.
fn pid1_script(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r"#!/bin/sh
set -eu
umount -l /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mount -t overlay overlay -o lowerdir={dir}/etc:/etc /etc
mount -t overlay overlay -o lowerdir={dir}/usr-bin:/usr/bin /usr/bin
mount -t tmpfs tmpfs {HOST_UNITS}
cp -a {dir}/units/. {HOST_UNITS}/
mount -t tmpfs tmpfs /usr/lib/systemd/system-generators
mount -t tmpfs tmpfs /etc/systemd/system
cp {agent} {collector} /etc/systemd/system/
for unit in {AGENT} {COLLECTOR}; do
    mkdir -p /run/systemd/system/$unit.d
    printf '[Service]\nStandardOutput=append:/run/%s.log\nStandardError=append:/run/%s.log\n' \
        $unit $unit > /run/systemd/system/$unit.d/log.conf
done
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /var/spool
mount -t tmpfs tmpfs /tmp
exec env container=recorder-test /usr/lib/systemd/systemd --system --unit=multi-user.target
",
        agent = unit(AGENT).display(),
        collector = unit(COLLECTOR).display(),
    )
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
}

fn caps(status: &str, name: &str) -> u64 {
    u64::from_str_radix(field(status, name), 16).unwrap()
}

/// Both units start under a real systemd and say READY=1 (the agent once its programs are
/// attached), with exactly the privileges the units give them and nothing written outside
/// what they may write; the agent, stopped as a wedged process would be, misses its
/// watchdog pings and systemd replaces it.
#[test]
fn under_systemd_both_start_sandboxed_and_a_wedged_agent_is_restarted() {
    if !privileged("under_systemd_both_start_sandboxed_and_a_wedged_agent_is_restarted") {
        return;
    }
    let systemd = Systemd::boot();
    systemd.wait_active(COLLECTOR, Duration::from_mins(1));
    systemd.wait_active(AGENT, Duration::from_mins(1));
    let ready = Instant::now();
    assert_eq!(systemd.property(AGENT, "StatusText"), "capturing");

    let (agent, status) = systemd.main_status(AGENT);
    assert_eq!(field(&status, "Uid").split_whitespace().next(), Some("0"));
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(caps(&status, set), AGENT_CAPS, "agent {set}:\n{status}");
    }
    assert_eq!(field(&status, "NoNewPrivs"), "1");
    assert_eq!(field(&status, "Seccomp"), "2", "a system call filter");
    let (_, status) = systemd.main_status(COLLECTOR);
    assert_ne!(field(&status, "Uid").split_whitespace().next(), Some("0"));
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(caps(&status, set), 0, "collector {set}:\n{status}");
    }
    assert_eq!(field(&status, "Seccomp"), "2", "a system call filter");

    // Capturing in its sandbox: the spool fills and the pins are made.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !systemd
        .inside(&["ls", "/var/spool/recorder"])
        .contains(".seg")
    {
        assert!(Instant::now() < deadline, "no spool segment");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(systemd.pins.is_dir(), "{} pinned", systemd.pins.display());

    // Past WatchdogSec=30s and still the same process: it pings.
    std::thread::sleep(Duration::from_secs(40).saturating_sub(ready.elapsed()));
    assert_eq!(
        systemd.main_status(AGENT).0,
        agent,
        "{}",
        systemd.log(AGENT)
    );
    assert_eq!(systemd.property(AGENT, "NRestarts"), "0");

    // SAFETY: stopping a process of this test's own systemd.
    unsafe { libc::kill(libc::pid_t::try_from(agent).unwrap(), libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_mins(1);
    while systemd.property(AGENT, "NRestarts") == "0" {
        assert!(
            Instant::now() < deadline,
            "a stopped agent was not restarted:\n{}",
            systemd.log(AGENT)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    systemd.wait_active(AGENT, Duration::from_mins(1));
    assert_ne!(systemd.main_status(AGENT).0, agent);
}
