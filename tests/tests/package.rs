//! The Debian packages (`cargo xtask package`, docs/deploy.md "Packages") install on this
//! machine with `dpkg -i`: files, users and directories as documented; the installed
//! daemons start with the installed settings, record an exec and verify it with the
//! installed client; `dpkg --purge` leaves nothing behind. Needs root; under `CI=true` a run
//! without root fails instead of skipping.
//!
//! The packages are built from the debug binaries the other tests run (`xtask package
//! --bin-dir`): a release build here would take minutes more for nothing the test checks.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use tests::{Scratch, agent::Agent, collector::Collector, mark, marker, privileged};

const PACKAGES: [&str; 3] = ["recorder-agent", "recorder-collector", "recorder"];

/// What the packages create or own besides their files under /usr.
const STATE: [&str; 3] = ["/etc/recorder", "/var/lib/recorder", "/var/spool/recorder"];

const INSTALLED: [&str; 5] = [
    "/usr/bin/recorder-agent",
    "/usr/bin/recorder-collector",
    "/usr/bin/recorder",
    "/usr/lib/systemd/system/recorder-agent.service",
    "/usr/lib/systemd/system/recorder-collector.service",
];

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn succeeds(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `getent` entry of `name` in `db` (`passwd`, `group`), split at its colons.
fn getent(db: &str, name: &str) -> Option<Vec<String>> {
    let out = run(Command::new("getent").args([db, name]));
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(str::to_owned)
            .collect()
    })
}

/// Whether dpkg knows nothing of `package`: never installed, or purged.
fn absent(package: &str) -> bool {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", package]));
    matches!(&*String::from_utf8_lossy(&out.stdout), "" | "not-installed")
}

/// The three packages installed, purged when dropped however the test ends. What a
/// `cargo xtask run` left at the packages' paths is set aside first and put back after: the
/// packages' purge would delete it.
struct Installed {
    set_aside: Vec<(PathBuf, PathBuf)>,
    /// Whether `dpkg -i` ran: only then is what lies at the packages' paths this test's.
    dpkg_ran: bool,
}

impl Installed {
    fn install(debs: &[PathBuf]) -> Self {
        for package in PACKAGES {
            assert!(
                absent(package),
                "{package} is installed here: its purge would remove a real deployment"
            );
        }
        assert!(
            getent("passwd", "recorder").is_none() && getent("group", "recorder").is_none(),
            "a user or group recorder exists here: the packages' purge would delete it"
        );
        let mut installed = Self {
            set_aside: Vec::new(),
            dpkg_ran: false,
        };
        let tag = marker("set-aside");
        for path in STATE.iter().map(Path::new).filter(|path| path.exists()) {
            let name = path.file_name().unwrap().to_str().unwrap();
            let aside = path.with_file_name(format!("{name}.{tag}"));
            fs::rename(path, &aside).unwrap();
            installed.set_aside.push((path.to_path_buf(), aside));
        }
        installed.dpkg_ran = true;
        succeeds(Command::new("dpkg").arg("-i").args(debs));
        installed
    }

    /// Purges the packages and checks they left nothing: files, directories, user, group,
    /// dpkg's record of them. Then puts back what was set aside.
    fn purge(self) {
        let said = succeeds(Command::new("dpkg").arg("--purge").args(PACKAGES));
        for path in INSTALLED.iter().chain(&STATE) {
            assert!(
                !Path::new(path).exists(),
                "{path} left after purge:\n{said}"
            );
        }
        assert!(getent("passwd", "recorder").is_none(), "user left");
        assert!(getent("group", "recorder").is_none(), "group left");
        for package in PACKAGES {
            assert!(absent(package), "{package} left after purge:\n{said}");
        }
        drop(self);
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.dpkg_ran && std::thread::panicking() {
            let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).status();
            // Whatever a failed purge left was made by this test.
            for path in STATE {
                let _ = fs::remove_dir_all(path);
            }
        }
        for (path, aside) in &self.set_aside {
            if let Err(e) = fs::rename(aside, path) {
                eprintln!("put {} back from {}: {e}", path.display(), aside.display());
            }
        }
    }
}

/// `path`'s mode bits, owner and group.
fn mode_owner(path: &str) -> (u32, u32, u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

/// A copy of the settings file `path` with every commented setting (`# key = value`) set.
fn uncommented(path: &str, to: &Path) {
    let text: String = fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(setting) if toml_setting(setting) => format!("{setting}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    fs::write(to, text).unwrap();
}

/// Whether `line` is a `key = value` line, a string or number or list or boolean.
fn toml_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, value)| {
        key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            && (value.starts_with(['"', '['])
                || value.parse::<u64>().is_ok()
                || matches!(value, "true" | "false"))
    })
}

/// `--print-config`'s `key = value` lines, without where each came from.
fn print_config(binary: &str, args: &[&str]) -> Vec<String> {
    succeeds(Command::new(binary).args(args).arg("--print-config"))
        .lines()
        .filter_map(|l| Some(l.split_once("  # ")?.0.to_owned()))
        .collect()
}

/// The installed settings files hold only settings the daemons accept, and each commented
/// one shows the default where it has one: set, they change nothing.
fn settings_files_hold_the_defaults() {
    let scratch = Scratch::new("package-settings");
    for (binary, file, base) in [
        (
            "/usr/bin/recorder-agent",
            "/etc/recorder/agent.toml",
            &["--spool", "/var/spool/recorder"][..],
        ),
        (
            "/usr/bin/recorder-collector",
            "/etc/recorder/collector.toml",
            &[][..],
        ),
    ] {
        let all = scratch.join(Path::new(file).file_name().unwrap());
        uncommented(file, &all);
        let set = print_config(binary, &["--config", all.to_str().unwrap()]);
        let defaults = print_config(binary, &[&["--config", "/dev/null"][..], base].concat());
        let differ: Vec<&String> = set
            .iter()
            .filter(|line| {
                let key = line.split(" = ").next().unwrap();
                defaults
                    .iter()
                    .any(|d| d.split(" = ").next() == Some(key) && d != *line)
            })
            .collect();
        assert!(
            differ.is_empty(),
            "{file}: commented settings not at their defaults: {differ:?}"
        );
    }
}

/// Every file, directory and the user where docs/deploy.md says, with the modes and owners
/// it says; the settings files are conffiles.
fn installed_as_documented() {
    for path in INSTALLED {
        let (mode, uid, gid) = mode_owner(path);
        let want = if path.ends_with(".service") {
            0o644
        } else {
            0o755
        };
        assert_eq!((mode, uid, gid), (want, 0, 0), "{path}");
    }
    for unit in ["recorder-agent.service", "recorder-collector.service"] {
        assert_eq!(
            fs::read(Path::new("/usr/lib/systemd/system").join(unit)).unwrap(),
            fs::read(tests::workspace_root().join("deploy/systemd").join(unit)).unwrap(),
            "{unit} installed as it is in deploy/systemd"
        );
    }
    let user = getent("passwd", "recorder").expect("postinst made the user recorder");
    let uid: u32 = user[2].parse().unwrap();
    let gid: u32 = user[3].parse().unwrap();
    assert!(uid < 1000, "a system user: {user:?}");
    assert_eq!(&user[5..], ["/var/lib/recorder", "/usr/sbin/nologin"]);
    assert_eq!(getent("group", "recorder").unwrap()[2], gid.to_string());
    assert_eq!(mode_owner("/etc/recorder/agent.toml"), (0o644, 0, 0));
    assert_eq!(mode_owner("/etc/recorder/collector.toml"), (0o640, 0, gid));
    assert_eq!(mode_owner("/var/lib/recorder"), (0o700, uid, gid));
    assert_eq!(mode_owner("/var/spool/recorder"), (0o700, 0, 0));
    for (package, conffile) in [
        ("recorder-agent", "/etc/recorder/agent.toml"),
        ("recorder-collector", "/etc/recorder/collector.toml"),
    ] {
        let listed = succeeds(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", package]));
        assert!(listed.contains(conffile), "{package} conffiles: {listed}");
    }
}

#[test]
fn packages_install_run_record_verify_and_purge_cleanly() {
    if !privileged("packages_install_run_record_verify_and_purge_cleanly") {
        return;
    }
    let scratch = Scratch::new("package");
    let started = Instant::now();
    let bin_dir = tests::agent::binary().parent().unwrap().to_path_buf();
    let debs = succeeds(
        Command::new(tests::binary("RECORDER_XTASK_BIN", "xtask"))
            .args(["package", "--bin-dir"])
            .arg(&bin_dir)
            .arg("--out")
            .arg(scratch.join("debian")),
    );
    let debs: Vec<PathBuf> = debs.lines().map(PathBuf::from).collect();
    eprintln!("packaged in {:?}", started.elapsed());
    assert_eq!(debs.len(), 3, "{debs:?}");

    let installed = Installed::install(&debs);
    succeeds(Command::new("dpkg").arg("--verify").args(PACKAGES));
    installed_as_documented();

    // The collector's settings are for its user's eyes: it reads them, another cannot.
    succeeds(Command::new("runuser").args([
        "-u",
        "recorder",
        "--",
        "/usr/bin/recorder-collector",
        "--print-config",
    ]));
    let other = run(Command::new("runuser").args([
        "-u",
        "nobody",
        "--",
        "/usr/bin/recorder-collector",
        "--print-config",
    ]));
    assert!(
        !other.status.success()
            && String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "nobody read collector.toml: {other:?}"
    );
    settings_files_hold_the_defaults();

    // The installed daemons with the installed settings, on this test's store, spool and
    // port (flags override the files), over mutual TLS with the harness's test PKI.
    let mut collector_cmd = Command::new("/usr/bin/recorder-collector");
    collector_cmd.args(["--config", "/etc/recorder/collector.toml"]);
    let collector = Collector::start_command(
        collector_cmd,
        &scratch.join("store.db"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &[],
    );
    let mut agent_cmd = Command::new("/usr/bin/recorder-agent");
    agent_cmd.args(["--config", "/etc/recorder/agent.toml"]);
    let agent = Agent::shipping_command(agent_cmd, &scratch.join("spool"), &collector.url(), &[]);
    let arg = marker("packaged");
    let identity = mark(&arg);
    let event = tests::operator::stored_exec_with(
        Path::new("/usr/bin/recorder"),
        &collector.url(),
        &identity,
        &arg,
        Duration::from_secs(30),
    );
    assert_eq!(event["filename"], "/bin/true");
    let verify = tests::operator::run_binary(
        Path::new("/usr/bin/recorder"),
        &collector.url(),
        &["verify"],
    );
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    drop(agent.stop());
    let (stopped, log) = collector.terminate();
    assert!(stopped.success(), "collector: {stopped}\n{log}");

    installed.purge();
    eprintln!("done in {:?}", started.elapsed());
}
