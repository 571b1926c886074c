//! A real PostgreSQL server for the collector's tests on that backend: one per test
//! process, made with `initdb` in a directory of its own and reached only through a Unix
//! socket there. It runs as the `postgres` user (the server refuses root) and dies with the
//! test process. Each store path a test names is a database of its own.

use std::{
    collections::HashMap,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// The role every test database belongs to (trusted on the server's socket).
const ROLE: &str = "recorder";

/// The port of the shared server, which names its socket.
const PORT: u16 = 5432;

struct Server {
    dir: PathBuf,
    /// The database of each store path, made on first use.
    databases: Mutex<HashMap<PathBuf, String>>,
}

/// The binaries of the newest PostgreSQL installed (Debian's `postgresql` package).
fn bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (`cargo xtask setup` installs it)")
        .map(|e| e.unwrap().path())
        .collect();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .last()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name)
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam reads a static entry, copied out at once; the tests call it from one
    // thread (under the server's OnceLock).
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "the postgres user exists");
    // SAFETY: checked not null above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// `cmd` run as the `postgres` user; with `die_with_parent`, it is sent SIGQUIT (the
/// server's immediate shutdown) when the thread that started it ends.
fn as_postgres(cmd: &mut Command, die_with_parent: bool) -> &mut Command {
    let (uid, gid) = postgres_user();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // After setuid, which clears it.
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Removes the directories of servers whose test processes are gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("recorder-postgres-"))
            // The TLS server's directory is the same pid's, with a suffix.
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> Server {
    remove_stale();
    let dir = std::env::temp_dir().join(format!("recorder-postgres-{}", std::process::id()));
    init(&dir);
    spawn(
        &dir,
        PORT,
        &["-c", "listen_addresses=", "-c", "max_connections=200"],
    );
    Server {
        dir,
        databases: Mutex::default(),
    }
}

/// A new data directory at `dir`, owned by the `postgres` user; `ROLE` is trusted on the
/// socket there.
fn init(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let (uid, gid) = postgres_user();
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = as_postgres(&mut Command::new(bin("initdb")), false)
        .arg("-D")
        .arg(dir)
        .args([
            "-U",
            ROLE,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the server of `dir` on `port` with `args`, its socket in `dir`, and waits until it
/// answers.
fn spawn(dir: &Path, port: u16, args: &[&str]) {
    // The server's parent is a thread that never ends, so the server lives exactly as long
    // as the test process.
    let (started, spawned) = std::sync::mpsc::channel();
    let data = dir.to_path_buf();
    let mut args: Vec<String> = args.iter().map(ToString::to_string).collect();
    args.extend(["-c".to_owned(), format!("port={port}")]);
    std::thread::spawn(move || {
        let child = as_postgres(&mut Command::new(bin("postgres")), true)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&data)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        started.send(child.map(|_| ())).unwrap();
        loop {
            std::thread::park();
        }
    });
    spawned.recv().unwrap().expect("start postgres");
    let deadline = Instant::now() + Duration::from_mins(1);
    while !psql(dir, port, "postgres", "SELECT 1").status.success() {
        assert!(Instant::now() < deadline, "PostgreSQL did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A second server for the store's TLS tests, on 127.0.0.1 with the certificate and key
/// given: over TCP it takes TLS connections only (`hostssl`); its socket stays for the
/// tests' own `psql`. With `clients` (CA certificates, PEM), it lets a client in only by a
/// certificate that chains to them (`cert` authentication, any name taken as the role
/// `recorder`); without, it trusts the role. It dies with the test process.
pub struct TlsServer {
    dir: PathBuf,
    port: u16,
}

impl TlsServer {
    #[must_use]
    pub fn start(cert_pem: &str, key_pem: &str, clients: Option<&str>) -> Self {
        let name = if clients.is_some() { "tls-cert" } else { "tls" };
        let dir =
            std::env::temp_dir().join(format!("recorder-postgres-{}-{name}", std::process::id()));
        init(&dir);
        let (uid, gid) = postgres_user();
        let mut files = vec![("server.pem", cert_pem), ("server.key", key_pem)];
        files.extend(clients.map(|ca| ("clients.pem", ca)));
        for (name, pem) in files {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let over_tcp = if clients.is_some() {
            std::fs::write(dir.join("pg_ident.conf"), "any /^(.*)$ recorder\n").unwrap();
            "cert map=any"
        } else {
            "trust"
        };
        std::fs::write(
            dir.join("pg_hba.conf"),
            format!("local all all trust\nhostssl all all 127.0.0.1/32 {over_tcp}\n"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut settings = vec![
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "ssl=on",
            "-c",
            "ssl_cert_file=server.pem",
            "-c",
            "ssl_key_file=server.key",
        ];
        if clients.is_some() {
            settings.extend(["-c", "ssl_ca_file=clients.pem"]);
        }
        spawn(&dir, port, &settings);
        Self { dir, port }
    }

    /// A `--store` URL of its database `store`, dialled as `host`.
    #[must_use]
    pub fn url(&self, host: &str) -> String {
        format!("postgresql://{ROLE}@{host}:{}/store", self.port)
    }

    /// Makes its database `store` afresh.
    pub fn reset(&self) {
        for sql in ["DROP DATABASE IF EXISTS store", "CREATE DATABASE store"] {
            query(&self.dir, self.port, "postgres", sql);
        }
    }

    /// The connections to its database `store`, and how many of them are TLS.
    #[must_use]
    pub fn connections(&self) -> (u64, u64) {
        let text = query(
            &self.dir,
            self.port,
            "postgres",
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = 'store'",
        );
        let (all, tls) = text.trim().split_once('|').expect("two counts");
        (all.parse().unwrap(), tls.parse().unwrap())
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

/// `psql` on the server whose socket is in `dir`, named by its `port`.
fn psql(dir: &Path, port: u16, database: &str, sql: &str) -> std::process::Output {
    Command::new(bin("psql"))
        .arg("-h")
        .arg(dir)
        .arg("-p")
        .arg(port.to_string())
        .args([
            "-U",
            ROLE,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            // Rows unaligned and without headers, as `query` returns them.
            "-At",
            "-c",
            sql,
        ])
        .output()
        .expect("run psql")
}

/// Runs `sql` on `database` of the shared server; its rows, unaligned.
fn run(database: &str, sql: &str) -> String {
    query(&server().dir, PORT, database, sql)
}

/// Runs `sql` on `database` of the server at `dir` and `port`; its rows, unaligned.
fn query(dir: &Path, port: u16, database: &str, sql: &str) -> String {
    let out = psql(dir, port, database, sql);
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The database of `store`, made on first use.
fn database(store: &Path) -> String {
    let server = server();
    let mut databases = server.databases.lock().unwrap();
    if let Some(name) = databases.get(store) {
        return name.clone();
    }
    let name = format!("store_{}", databases.len());
    run("postgres", &format!("CREATE DATABASE {name}"));
    databases.insert(store.to_path_buf(), name.clone());
    name
}

/// The `--store` URL of the database that stands for `store`.
#[must_use]
pub fn url(store: &Path) -> String {
    let name = database(store);
    format!(
        "postgresql:///{name}?user={ROLE}&host={}",
        server().dir.display()
    )
}

/// A `postgresql://` URL of the shared server with `{db}` where a database's name goes, as
/// the collector's ingest bench takes it (`RECORDER_BENCH_POSTGRES`): the bench makes its
/// databases itself.
#[must_use]
pub fn template() -> String {
    format!(
        "postgresql:///{{db}}?user={ROLE}&host={}",
        server().dir.display()
    )
}

/// Makes the database of `to` a copy of the database of `from`, as a backup is taken or
/// restored. No collector may be connected to either.
pub fn copy(from: &Path, to: &Path) {
    let (from, to) = (database(from), database(to));
    run("postgres", &format!("DROP DATABASE {to}"));
    run("postgres", &format!("CREATE DATABASE {to} TEMPLATE {from}"));
}

/// Applies `sql` to the database of `store`; its rows, unaligned.
#[must_use]
pub fn sql(store: &Path, sql: &str) -> String {
    run(&database(store), sql)
}

/// A psql session on the database of a store that stays open between statements, so a test
/// can hold a transaction, and its locks, while collectors work. Ended when dropped.
pub struct Session {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    #[must_use]
    pub fn open(store: &Path) -> Self {
        let dir = &server().dir;
        let mut child = Command::new(bin("psql"))
            .arg("-h")
            .arg(dir)
            .args(["-p", &PORT.to_string(), "-U", ROLE, "-d", &database(store)])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-At"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run psql");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs `sql`, which must print one line, and returns that line once it is printed:
    /// by then every statement before it has run.
    pub fn line(&mut self, sql: &str) -> String {
        use std::io::{BufRead as _, Write as _};
        writeln!(self.stdin, "{sql}").expect("psql takes the statement");
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("psql answers");
        assert!(!line.is_empty(), "psql ended before answering {sql}");
        line.trim_end().to_owned()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The connections open to the database of `store`.
#[must_use]
pub fn connections(store: &Path) -> u64 {
    let name = database(store);
    run(
        "postgres",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"),
    )
    .trim()
    .parse()
    .expect("a count")
}
