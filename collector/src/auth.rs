//! Who calls, from the certificate the connection was made with (docs/pki.md), and what
//! they may do. Nothing a request carries says who it is from. Refusals of a caller that
//! presented a certificate are evidence: they are logged and chained as `auth_failure`
//! alerts (`Gate`), as are certificates refused during the TLS handshake; and every read of
//! the evidence is chained as an `access` event before it is served.

use std::{
    collections::HashSet,
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant},
};

use pki::{ConnInfo, Peer, Role};
use proto::v1::{Access, Alert, event::Body};
use tonic::{Request, Status};

use crate::writer::{Own, WriterHandle};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// An agent, for the one host its certificate names.
    Agent {
        host: String,
    },
    Operator {
        name: String,
        role: Role,
    },
    /// The collector runs without TLS (`--insecure-plaintext`, loopback only): callers are
    /// nobody in particular, and are let do what an admin may.
    Insecure,
}

impl Caller {
    /// The name actions are recorded under.
    pub(crate) fn name(&self) -> String {
        match self {
            Self::Agent { host } => format!("agent:{host}"),
            Self::Operator { name, .. } => name.clone(),
            Self::Insecure => "insecure-plaintext".into(),
        }
    }

    pub(crate) fn role(&self) -> &'static str {
        match self {
            Self::Agent { .. } => "agent",
            Self::Operator { role, .. } => role.as_str(),
            Self::Insecure => "admin",
        }
    }
}

/// Why a call is refused for who made it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// A connection without a certificate, where one is needed.
    #[error(
        "a client certificate from this deployment's CA is required (recorder pki issue; agents \
         join with a token)"
    )]
    NoCertificate,
    /// A certificate whose holder may not do this.
    #[error("{0}")]
    Denied(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::NoCertificate => Self::unauthenticated(e.to_string()),
            AuthError::Denied(_) => Self::permission_denied(e.to_string()),
        }
    }
}

/// The caller of `request`. A connection made over TLS without a certificate is nobody.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Caller, AuthError> {
    let info = request
        .extensions()
        .get::<ConnInfo>()
        .ok_or(AuthError::NoCertificate)?;
    match (info.peer(), info.tls) {
        (Some(Peer::Agent { host }), _) => Ok(Caller::Agent { host: host.clone() }),
        (Some(Peer::Operator { name, role }), _) => Ok(Caller::Operator {
            name: name.clone(),
            role: *role,
        }),
        (Some(Peer::Collector { name }), _) => Err(AuthError::Denied(format!(
            "collector {name}'s certificate is for serving, not for calling"
        ))),
        (Some(Peer::Witness { name }), _) => Err(AuthError::Denied(format!(
            "witness {name}'s certificate is for signing, not for calling"
        ))),
        (None, false) => Ok(Caller::Insecure),
        (None, true) => Err(AuthError::NoCertificate),
    }
}

/// The caller of `request`, whoever it is; a connection without a certificate is refused
/// (and logged: there is no identity to chain).
pub(crate) fn identify<T>(request: &Request<T>) -> Result<Caller, Status> {
    caller(request).map_err(|e| {
        tracing::warn!(remote = %remote(request), error = %e, "refused");
        Status::from(e)
    })
}

/// The remote address of `request`, for logs.
pub(crate) fn remote<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<ConnInfo>()
        .map_or_else(|| "unknown".into(), |i| i.remote_addr.to_string())
}

impl Caller {
    /// An operator of at least `role` (auditor < approver < admin), or the insecure caller.
    pub(crate) fn at_least(&self, role: Role, what: &str) -> Result<(), AuthError> {
        match self {
            Self::Insecure => Ok(()),
            Self::Operator { role: held, .. } if *held >= role => Ok(()),
            Self::Operator { name, role: held } => Err(AuthError::Denied(format!(
                "{name} is {held}: {what} needs {role} or above"
            ))),
            Self::Agent { host } => Err(AuthError::Denied(format!(
                "the agent of {host} may only ship its own evidence; {what} needs an operator"
            ))),
        }
    }
}

/// Hosts whose certificates are refused: kept in the store, held here for every call.
#[derive(Clone, Default)]
pub(crate) struct Revoked(Arc<RwLock<HashSet<String>>>);

impl Revoked {
    pub(crate) fn new(hosts: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(RwLock::new(hosts.into_iter().collect())))
    }

    pub(crate) fn contains(&self, host: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(host)
    }

    pub(crate) fn insert(&self, host: String) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host);
    }
}

/// `auth_failure` alerts chained per second at most; past it refusals are counted and the
/// next alert says how many went unchained, so a flood of bad clients cannot flood the
/// evidence.
const ALERTS_PER_SECOND: u32 = 20;

/// Lets callers in by their certificates, and records what it refuses and what it lets
/// operators read: refusals are logged and chained as `auth_failure` alerts, reads as
/// `access` events, both in the collector's chain.
#[derive(Clone)]
pub(crate) struct Gate {
    writer: WriterHandle,
    budget: Arc<Mutex<(Instant, u32, u64)>>,
}

impl Gate {
    pub(crate) fn new(writer: WriterHandle) -> Self {
        Self {
            writer,
            budget: Arc::new(Mutex::new((Instant::now(), 0, 0))),
        }
    }

    /// The caller of `request` if it may `what`, needing `role`; a refusal of a certificate
    /// holder is chained.
    pub(crate) async fn operator<T>(
        &self,
        request: &Request<T>,
        role: Role,
        what: &str,
    ) -> Result<Caller, Status> {
        let caller = identify(request)?;
        if let Err(e) = caller.at_least(role, what) {
            self.refused(&caller.name(), "", &e.to_string()).await;
            return Err(e.into());
        }
        Ok(caller)
    }

    /// Records that `caller` reads the evidence (`method`, with what it asked in `detail`),
    /// before anything is read: a read that cannot be recorded is refused.
    pub(crate) async fn read(
        &self,
        caller: &Caller,
        method: &str,
        detail: String,
    ) -> Result<(), Status> {
        let name = caller.name();
        let access = Own::access(
            &name,
            Body::Access(Access {
                actor: name.clone(),
                role: caller.role().into(),
                method: method.into(),
                detail,
            }),
        );
        self.writer.record(access).await.map_err(|e| {
            tracing::error!(error = %e, "cannot record a read of the evidence; refusing it");
            Status::unavailable(format!(
                "the read cannot be recorded, so it is refused: {e}"
            ))
        })
    }

    /// Logs and chains one refusal of `who` (a certificate's identity, or what was seen of
    /// it) about `host` (empty when none).
    pub(crate) async fn refused(&self, who: &str, host: &str, why: &str) {
        tracing::warn!(%who, %host, %why, "refused");
        let unchained = {
            let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
            let (since, spent, dropped) = &mut *budget;
            if since.elapsed() >= Duration::from_secs(1) {
                *since = Instant::now();
                *spent = 0;
            }
            if *spent >= ALERTS_PER_SECOND {
                *dropped += 1;
                return;
            }
            *spent += 1;
            std::mem::take(dropped)
        };
        let mut message = format!("{who}: {why}");
        if unchained > 0 {
            let _ = write!(
                message,
                " ({unchained} refusals before this one were logged, not chained: more than \
                 {ALERTS_PER_SECOND} a second)"
            );
        }
        let alert = Own::alert(
            host,
            Body::Alert(Alert {
                kind: "auth_failure".into(),
                host: host.into(),
                message,
                ..Alert::default()
            }),
        );
        if let Err(error) = self.writer.record(alert).await {
            tracing::error!(%error, "cannot chain an auth_failure alert");
        }
    }
}
