//! The local registration API: a broker, PAM hook or CI runner says "audit session S, or
//! cgroup C, acts as identity I under grant G", and every later event of that session or
//! cgroup carries it. Served over gRPC on a Unix socket that only root can reach.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use proto::v1::{
    RegisterRequest, RegisterResponse, identity::Kind,
    register_request::Scope,
    registration_server::{Registration, RegistrationServer},
};
use tonic::{Request, Response, Status};
use tracing::info;

use super::attribute::Identity;

/// Longest identity or grant name accepted.
const NAME_MAX: usize = 256;

#[derive(Default)]
pub struct Registry {
    /// Set once anything is registered, so the common case costs no lock.
    any: AtomicBool,
    sessions: RwLock<HashMap<u32, Arc<Identity>>>,
    cgroups: RwLock<HashMap<u64, Arc<Identity>>>,
}

impl Registry {
    /// The registration for a session (which wins) or a cgroup.
    #[must_use]
    pub fn lookup(&self, sessionid: Option<u32>, cgroup_id: u64) -> Option<Arc<Identity>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let by_session = sessionid.and_then(|s| self.sessions.read().ok()?.get(&s).cloned());
        by_session.or_else(|| self.cgroups.read().ok()?.get(&cgroup_id).cloned())
    }

    fn register(&self, scope: Scope, registered: Arc<Identity>) {
        match scope {
            Scope::Sessionid(s) => self
                .sessions
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(s, registered),
            Scope::CgroupId(c) => self
                .cgroups
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(c, registered),
        };
        self.any.store(true, Ordering::Release);
    }
}

struct Service {
    registry: Arc<Registry>,
}

#[tonic::async_trait]
impl Registration for Service {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
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
        info!(?scope, identity, grant, "registered");
        let registered = Identity {
            kind: Kind::Registered,
            name: identity,
            reason: None,
            grant: (!grant.is_empty()).then_some(grant),
        };
        self.registry.register(scope, Arc::new(registered));
        Ok(Response::new(RegisterResponse {}))
    }
}

/// Binds `socket` (mode 0600: root only) and serves the registration API on a thread of its
/// own. A stale socket from an earlier run is replaced.
pub fn serve(socket: &Path, registry: Arc<Registry>) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
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
                    .add_service(RegistrationServer::new(Service { registry }))
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
