//! The collector under test: the real binary on a loopback port of its own, with its own
//! store, stopped and restarted on the same store. A store is named by a path: an `SQLite`
//! file, or with `RECORDER_TEST_STORE=postgres` a database of its own on a real PostgreSQL
//! server (`crate::postgres`).

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    Scratch,
    notify::Notify,
    pki::{self, TestPki},
};

/// The PKI of the collector of each store: a restart on the same store keeps it, so the
/// certificates its agents and operators hold stay good.
type Stores = Mutex<std::collections::HashMap<PathBuf, Arc<TestPki>>>;

fn stores() -> &'static Stores {
    static STORES: std::sync::OnceLock<Stores> = std::sync::OnceLock::new();
    STORES.get_or_init(Mutex::default)
}

fn pki_of_store(store: &Path) -> Arc<TestPki> {
    let mut stores = stores().lock().unwrap();
    Arc::clone(
        stores
            .entry(store.to_path_buf())
            .or_insert_with(TestPki::new),
    )
}

/// A collector of the store `copy` serves with the CA and keys of `store`'s: a copy of a
/// store is the same deployment's evidence.
pub fn same_pki(store: &Path, copy: &Path) {
    let pki = pki_of_store(store);
    stores().lock().unwrap().insert(copy.to_path_buf(), pki);
}

/// The backend the collector's stores are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `RECORDER_TEST_STORE`: `postgres`, else `SQLite`.
#[must_use]
pub fn backend() -> Backend {
    match std::env::var("RECORDER_TEST_STORE").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("RECORDER_TEST_STORE={other}: expected sqlite or postgres"),
    }
}

/// The `--store` URL of the store `store` names on the backend under test.
#[must_use]
pub fn store_url(store: &Path) -> String {
    match backend() {
        Backend::Sqlite => format!("sqlite://{}", store.display()),
        Backend::Postgres => crate::postgres::url(store),
    }
}

/// The collector binary: `RECORDER_COLLECTOR_BIN`, else the workspace's debug build.
#[must_use]
pub fn binary() -> PathBuf {
    crate::binary("RECORDER_COLLECTOR_BIN", "collector")
}

/// A command running the collector with no settings file: a test's flags are all its settings,
/// whatever the machine's /etc/recorder holds.
#[must_use]
pub fn command() -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(["--config", "/dev/null"]);
    cmd
}

/// A fresh directory under the system temp dir, for one test's store files; removed when
/// the test passes.
#[must_use]
pub fn scratch_dir(tag: &str) -> Scratch {
    Scratch::new(tag)
}

pub struct Collector {
    child: Child,
    _notify: Notify,
    /// Its CA and certificates; `None` when it serves plaintext (`--insecure-plaintext`).
    pub pki: Option<Arc<TestPki>>,
    /// The address it bound, as it logged it.
    pub addr: SocketAddr,
    pub store: PathBuf,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Collector {
    /// Starts the collector on `127.0.0.1:0` with the store `store`, and waits until it
    /// says where it listens.
    #[must_use]
    pub fn start(store: &Path) -> Self {
        Self::start_at(store, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts the collector on `addr` with the store `store`, and waits until it says
    /// where it listens: an agent pointed at a fixed address finds it again after a restart.
    #[must_use]
    pub fn start_at(store: &Path, addr: SocketAddr) -> Self {
        Self::start_with(store, addr, &[])
    }

    /// Starts the collector on `addr` with the store `store` and `extra` flags (a
    /// `--policy FILE`, say), and waits until it says it is ready and where it listens. It
    /// serves mutual TLS with a CA of the store's own, unless `extra` says
    /// `--insecure-plaintext`.
    #[must_use]
    pub fn start_with(store: &Path, addr: SocketAddr, extra: &[&str]) -> Self {
        Self::start_command(command(), store, addr, extra)
    }

    /// Like [`Collector::start_with`], running `cmd`: another binary, or another settings
    /// file (an installed package's, say).
    #[must_use]
    pub fn start_command(mut cmd: Command, store: &Path, addr: SocketAddr, extra: &[&str]) -> Self {
        let notify = Notify::new();
        notify.pass_to(&mut cmd);
        let pki = (!extra.contains(&"--insecure-plaintext")).then(|| pki_of_store(store));
        // A test that names the PKI directory itself (another collector's witness, say)
        // names its state directory too.
        if let Some(pki) = pki.as_ref().filter(|_| !extra.contains(&"--pki-dir")) {
            cmd.arg("--pki-dir").arg(pki.collector_dir());
            // The checkpoint of its own log, kept outside the database, goes with the store.
            cmd.arg("--state-dir").arg(store.with_extension("state"));
        }
        cmd.arg("--listen").arg(addr.to_string());
        // A test that names the store's URL itself (a database over TLS, say) keeps `store`
        // for the collector's certificates and state.
        if !extra.contains(&"--store") {
            cmd.arg("--store").arg(store_url(store));
        }
        let mut child = cmd
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the collector");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let log = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let listening = notify
            .wait_ready(&mut child, Duration::from_secs(30))
            .and_then(|statuses| {
                statuses
                    .iter()
                    .find_map(|s| s.strip_prefix("listening on ")?.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .ok_or_else(|| {
                        format!("its status does not say where it listens: {statuses:?}")
                    })
            });
        let addr = match listening {
            Ok(addr) => addr,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                panic!(
                    "the collector did not start: {why}; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let collector = Self {
            child,
            _notify: notify,
            pki,
            addr,
            store: store.to_path_buf(),
            stderr,
            reader: Some(reader),
        };
        if let Some(pki) = &collector.pki {
            pki::register(&collector.url(), pki);
        }
        collector
    }

    /// The gRPC endpoint: `https://` unless it serves plaintext.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What it logged so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kills it (as a crash would: durability must not depend on a clean stop) and returns
    /// what it logged.
    #[must_use = "the log tells why a test failed"]
    pub fn stop(mut self) -> String {
        self.halt();
        self.stderr()
    }

    /// Sends it SIGTERM, as a service manager stops it, and returns how it exited and what
    /// it logged.
    #[must_use]
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.stderr())
    }

    /// Stops it and starts it again on the same store (and PKI).
    #[must_use]
    pub fn restart(self) -> Self {
        let store = self.store.clone();
        drop(self.stop());
        Self::start(&store)
    }

    fn halt(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Runs the collector on `store` expecting it to exit by itself (within 30 s).
#[must_use]
pub fn run_to_exit(store: &Path) -> Output {
    run_to_exit_with(store, &[])
}

/// Runs the collector on `store` with `extra` flags, expecting it to exit by itself (within
/// 30 s).
#[must_use]
pub fn run_to_exit_with(store: &Path, extra: &[&str]) -> Output {
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0", "--store"])
        .arg(store_url(store))
        .arg("--pki-dir")
        .arg(pki_of_store(store).collector_dir())
        .args(extra);
    exit_of(cmd)
}

/// Runs `cmd` (a collector) expecting it to exit by itself; killed after 30 s, so that a
/// collector that serves when it should have refused fails the test, not hangs it.
#[must_use]
pub fn exit_of(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the collector");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
