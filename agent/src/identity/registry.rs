//! The local registration API: a broker, PAM hook or CI runner says "audit session S, or
//! cgroup C, acts as identity I under grant G", and every later event of that session or
//! cgroup carries it. Served over gRPC on a Unix socket only root can reach: the socket is
//! made in a private directory and moved into place, so it is never reachable by others,
//! and each request's peer must be root (`SO_PEERCRED`). A registration naming a grant is
//! taken only while that grant is live for the registered identity on this host. Each one
//! is chained (a `registration` event) and kept in the state directory, so it holds
//! across agent restarts within the boot it was made in.

use std::{
    collections::HashMap,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use proto::v1::{
    self, RegisterRequest, RegisterResponse,
    identity::Kind,
    register_request::Scope,
    registration_server::{Registration, RegistrationServer},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, transport::server::UdsConnectInfo};
use tracing::{info, warn};

use super::Identity;
use crate::evidence::{read_json, write_json_private};

/// Longest identity or grant name accepted.
const NAME_MAX: usize = 256;
/// Registrations kept at most; past it the oldest boot's are long gone and new ones are
/// refused with `RESOURCE_EXHAUSTED`.
const REGISTRATIONS_MAX: usize = 65_536;
const FILE: &str = "registrations.json";

/// What is kept on disk: registrations of the boot they were made in (audit session ids
/// restart with every boot).
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    boot_id: String,
    sessions: HashMap<u32, (String, Option<String>)>,
    cgroups: HashMap<u64, (String, Option<String>)>,
}

#[derive(Default)]
pub struct Registry {
    /// Set once anything is registered, so the common case costs no lock.
    any: AtomicBool,
    sessions: RwLock<HashMap<u32, Arc<Identity>>>,
    cgroups: RwLock<HashMap<u64, Arc<Identity>>>,
    /// Where registrations are kept, and this boot's id.
    state: Option<(PathBuf, String)>,
}

fn registered(name: String, grant: Option<String>) -> Arc<Identity> {
    Arc::new(Identity {
        kind: Kind::Registered,
        name,
        reason: None,
        grant,
    })
}

impl Registry {
    /// A registry kept in `dir` (the spool), starting from what it holds for this boot.
    #[must_use]
    pub fn open(dir: Option<&Path>, boot_id: &str) -> Self {
        let mut registry = Self {
            state: dir.map(|d| (d.join(FILE), boot_id.to_owned())),
            ..Self::default()
        };
        let Some((path, _)) = &registry.state else {
            return registry;
        };
        let saved: Option<Saved> = read_json(path);
        if let Some(saved) = saved.filter(|s| s.boot_id == boot_id) {
            let count = saved.sessions.len() + saved.cgroups.len();
            *registry
                .sessions
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner) = saved
                .sessions
                .into_iter()
                .map(|(k, (n, g))| (k, registered(n, g)))
                .collect();
            *registry
                .cgroups
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner) = saved
                .cgroups
                .into_iter()
                .map(|(k, (n, g))| (k, registered(n, g)))
                .collect();
            registry.any.store(count > 0, Ordering::Release);
            info!(registrations = count, "registrations of this boot restored");
        }
        registry
    }

    /// The registration for a session (which wins) or a cgroup.
    #[must_use]
    pub fn lookup(&self, sessionid: Option<u32>, cgroup_id: u64) -> Option<Arc<Identity>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let by_session = sessionid.and_then(|s| self.sessions.read().ok()?.get(&s).cloned());
        by_session.or_else(|| self.cgroups.read().ok()?.get(&cgroup_id).cloned())
    }

    fn register(&self, scope: Scope, identity: Arc<Identity>) -> Result<(), Status> {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut cgroups = self.cgroups.write().unwrap_or_else(PoisonError::into_inner);
        if sessions.len() + cgroups.len() >= REGISTRATIONS_MAX {
            return Err(Status::resource_exhausted(format!(
                "the agent holds {REGISTRATIONS_MAX} registrations already"
            )));
        }
        match scope {
            Scope::Sessionid(s) => sessions.insert(s, identity),
            Scope::CgroupId(c) => cgroups.insert(c, identity),
        };
        self.any.store(true, Ordering::Release);
        if let Some((path, boot_id)) = &self.state {
            let plain = |i: &Arc<Identity>| (i.name.clone(), i.grant.clone());
            let saved = Saved {
                boot_id: boot_id.clone(),
                sessions: sessions.iter().map(|(k, i)| (*k, plain(i))).collect(),
                cgroups: cgroups.iter().map(|(k, i)| (*k, plain(i))).collect(),
            };
            if let Err(error) = write_json_private(path, &saved) {
                warn!(%error, "cannot keep the registrations");
            }
        }
        Ok(())
    }
}

/// Whether grant `.0` is live now for the registered identity `.1` on this host: the
/// enforcer's view answers it, and the registry needs to know nothing of grants.
pub type GrantIsLive = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// What a registration is checked against, and where its record goes.
pub struct Service {
    registry: Arc<Registry>,
    grant_is_live: GrantIsLive,
    events: mpsc::Sender<Vec<v1::Event>>,
}

impl Service {
    #[must_use]
    pub fn new(
        registry: Arc<Registry>,
        grant_is_live: GrantIsLive,
        events: mpsc::Sender<Vec<v1::Event>>,
    ) -> Self {
        Self {
            registry,
            grant_is_live,
            events,
        }
    }
}

#[tonic::async_trait]
impl Registration for Service {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let peer = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred);
        let Some(peer) = peer.filter(|p| p.uid() == 0) else {
            warn!(peer = ?peer, "registration refused: the peer is not root");
            return Err(Status::permission_denied(
                "only root may register sessions and cgroups",
            ));
        };
        let RegisterRequest {
            scope,
            identity,
            grant,
        } = request.into_inner();
        let scope = scope
            .ok_or_else(|| Status::invalid_argument("scope: give a sessionid or a cgroup_id"))?;
        if identity.is_empty() || identity.len() > NAME_MAX {
            return Err(Status::invalid_argument(format!(
                "identity must be 1 to {NAME_MAX} bytes"
            )));
        }
        if grant.len() > NAME_MAX {
            return Err(Status::invalid_argument(format!(
                "grant must be at most {NAME_MAX} bytes"
            )));
        }
        if !grant.is_empty() && !(self.grant_is_live)(&grant, &identity) {
            warn!(identity, grant, "registration refused: no such live grant");
            return Err(Status::failed_precondition(format!(
                "grant {grant:?} is not live for the registered identity {identity:?} on this host"
            )));
        }
        info!(?scope, identity, grant, pid = ?peer.pid(), "registered");
        let record = v1::Event {
            time_unix_nano: proto::time::now_unix_nano(),
            body: Some(v1::event::Body::Registration(v1::Registered {
                sessionid: match scope {
                    Scope::Sessionid(s) => Some(s),
                    Scope::CgroupId(_) => None,
                },
                cgroup_id: match scope {
                    Scope::CgroupId(c) => c,
                    Scope::Sessionid(_) => 0,
                },
                identity: identity.clone(),
                grant: grant.clone(),
                peer_pid: peer.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                peer_uid: peer.uid(),
            })),
            ..v1::Event::default()
        };
        self.registry.register(
            scope,
            registered(identity, (!grant.is_empty()).then_some(grant)),
        )?;
        // Chained after it takes effect: the events it attributes follow it or race it, and
        // both orders are evidence of the same registration.
        let _ = self.events.send(vec![record]).await;
        Ok(Response::new(RegisterResponse {}))
    }
}

/// Binds `socket` and serves the registration API on a thread of its own. The socket is
/// bound in a private directory next to it (mode 0700), made 0600 there, and renamed into
/// place: no moment exists at which another user could reach it. A stale socket from an
/// earlier run is replaced.
pub fn serve(socket: &Path, service: Service) -> anyhow::Result<()> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let private = dir.join(format!(".registration-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let staged = private.join("socket");
    let listener = std::os::unix::net::UnixListener::bind(&staged)
        .with_context(|| format!("binding {}", staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staged, socket)
        .with_context(|| format!("moving the socket to {}", socket.display()))?;
    let _ = std::fs::remove_dir(&private);
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::UnixListener::from_std(listener)?
    };
    let path: PathBuf = socket.to_path_buf();
    std::thread::Builder::new()
        .name("registration".into())
        .spawn(move || {
            runtime.block_on(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(RegistrationServer::new(service))
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, socket = %path.display(), "registration API stopped");
                }
            });
        })?;
    info!(socket = %socket.display(), "registration API listening");
    Ok(())
}
