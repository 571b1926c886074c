//! A CA of one test's own, and the certificates its collector, agents and operators use: the
//! collector under test serves mutual TLS like any other. Each collector started by the
//! harness gets one, found again by its URL, so the operators' client and the agents a test
//! points at that URL present certificates from it.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use pki::{Ca, Issued, Role, Validity};

use crate::Scratch;

const LIFETIME: Duration = Duration::from_hours(24);

/// The CA, with the collector's certificate and key beside it (the collector's `--pki-dir`,
/// holding `ca.key` so hosts can enroll), and the clients' directories made on demand.
pub struct TestPki {
    dir: Scratch,
    ca: Ca,
    made: Mutex<HashMap<String, PathBuf>>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

fn write(dir: &Path, name: &str, issued: &Issued) {
    pki::write_private(&dir.join(format!("{name}.key")), issued.key_pem.as_bytes()).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
}

impl TestPki {
    #[must_use]
    pub fn new() -> Arc<Self> {
        let dir = Scratch::new("pki");
        let collector = dir.join("collector");
        let ca = Ca::init(&collector).expect("a test CA");
        let issued = ca
            .issue_collector(
                "test",
                &["localhost".into()],
                &[IpAddr::from([127, 0, 0, 1])],
                Validity::from_now(LIFETIME),
            )
            .expect("the collector's certificate");
        write(&collector, "collector", &issued);
        let witness = ca
            .issue_witness("test", Validity::from_now(LIFETIME))
            .expect("the collector's witness certificate");
        write(&collector, "witness", &witness);
        Arc::new(Self {
            dir,
            ca,
            made: Mutex::new(HashMap::new()),
        })
    }

    /// The collector's `--pki-dir`.
    #[must_use]
    pub fn collector_dir(&self) -> PathBuf {
        self.dir.join("collector")
    }

    /// The `--pki-dir` of another collector of the same deployment: the same CA and server
    /// certificate, and a witness certificate of its own, for `name`.
    #[must_use]
    pub fn collector_named(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(format!("collector-{name}"));
        if dir.exists() {
            return dir;
        }
        pki::create_private_dir(&dir).unwrap();
        for file in ["ca.pem", "ca.key", "collector.pem", "collector.key"] {
            std::fs::copy(self.collector_dir().join(file), dir.join(file)).unwrap();
        }
        let witness = self
            .ca
            .issue_witness(name, Validity::from_now(LIFETIME))
            .expect("a witness certificate");
        write(&dir, "witness", &witness);
        dir
    }

    /// The CA certificate.
    #[must_use]
    pub fn ca_pem(&self) -> PathBuf {
        self.collector_dir().join("ca.pem")
    }

    /// A directory with `ca.pem` and `NAME.pem`/`NAME.key` made by `issue`, once per tag.
    fn client(&self, tag: &str, name: &str, issue: impl FnOnce(&Ca) -> Issued) -> PathBuf {
        let mut made = self.made.lock().unwrap();
        if let Some(dir) = made.get(tag) {
            return dir.clone();
        }
        let dir = self.dir.join(tag);
        pki::create_private_dir(&dir).unwrap();
        std::fs::copy(self.ca_pem(), dir.join("ca.pem")).unwrap();
        write(&dir, name, &issue(&self.ca));
        made.insert(tag.to_owned(), dir.clone());
        dir
    }

    /// An operator's `--pki-dir`: `operator.pem` naming `name` with `role`.
    #[must_use]
    pub fn operator(&self, name: &str, role: Role) -> PathBuf {
        self.client(&format!("operator-{name}-{role}"), "operator", |ca| {
            ca.issue_operator(name, role, Validity::from_now(LIFETIME))
                .unwrap()
        })
    }

    /// The admin operator the harness's operator commands run as.
    #[must_use]
    pub fn admin(&self) -> PathBuf {
        self.operator("test-admin", Role::Admin)
    }

    /// An agent's `--pki-dir`: `agent.pem` for `host`.
    #[must_use]
    pub fn agent(&self, host: &str) -> PathBuf {
        self.client(&format!("agent-{host}"), "agent", |ca| {
            ca.issue_agent(host, Validity::from_now(LIFETIME)).unwrap()
        })
    }

    /// A certificate and key issued now for `issue`, as (cert, key) paths, for tests that
    /// need one the harness would not make (expired, say).
    pub fn issue(&self, tag: &str, issue: impl FnOnce(&Ca) -> Issued) -> (PathBuf, PathBuf) {
        let dir = self.client(tag, "cert", issue);
        (dir.join("cert.pem"), dir.join("cert.key"))
    }
}

fn registry() -> &'static Mutex<HashMap<String, Arc<TestPki>>> {
    static URLS: OnceLock<Mutex<HashMap<String, Arc<TestPki>>>> = OnceLock::new();
    URLS.get_or_init(Mutex::default)
}

/// Remembers that the collector at `url` uses `pki`.
pub fn register(url: &str, pki: &Arc<TestPki>) {
    registry()
        .lock()
        .unwrap()
        .insert(url.to_owned(), Arc::clone(pki));
}

/// The PKI of the collector at `url`, if the harness started it with one.
#[must_use]
pub fn of(url: &str) -> Option<Arc<TestPki>> {
    registry().lock().unwrap().get(url).cloned()
}
