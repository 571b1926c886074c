//! Enrollment and administration, the RPC edge of hosts joining and being revoked
//! (admin.proto, docs/pki.md). A host enrolls with a single-use join token made for it: the
//! collector keeps the token's hash only, signs the host's CSR for the host the token names
//! (whatever the CSR asks), and chains the act. Every refusal of a token or a certificate is
//! chained as an `auth_failure` alert.

use std::{sync::Arc, time::Duration};

use pki::{Ca, Role, Token, Validity, token_hash};
use proto::{
    json::hex,
    time::{now_unix_nano, rfc3339_millis},
    v1::{
        AdminAct, CreateTokenRequest, CreateTokenResponse, EnrollRequest, EnrollResponse,
        HoldRequest, HoldResponse, RenewRequest, RevokeHostRequest, RevokeHostResponse,
        admin_server::Admin, enrollment_server::Enrollment,
    },
};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Caller, Gate, Revoked, remote},
    error::AdminError,
    store::{HoldRow, RevokedHost, Store, TokenRow, blocking},
    writer::{AdminChange, WriterHandle},
};

/// How long an agent's certificate lasts; agents renew it a third of the way before its end.
pub(crate) const AGENT_CERT_LIFETIME: Duration = Duration::from_hours(30 * 24);
/// How long a join token lasts when its maker does not say.
const TOKEN_TTL: Duration = Duration::from_hours(1);
/// The longest a join token may last.
const TOKEN_TTL_MAX: Duration = Duration::from_hours(7 * 24);
/// Longest reason kept.
const REASON_MAX: usize = 1024;

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        let message = e.to_string();
        match e {
            AdminError::Invalid(_) | AdminError::Pki(_) => Self::invalid_argument(message),
            AdminError::Token(_) => Self::unauthenticated(message),
            // Another collector of the store decided something first: nothing was stored.
            AdminError::Store(e) if e.is_moved() => Self::aborted(format!("{message}; try again")),
            AdminError::Store(_) => Self::internal(message),
            AdminError::Unavailable => Self::unavailable(message),
        }
    }
}

/// What both services share.
#[derive(Clone)]
pub(crate) struct Hosts {
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub gate: Gate,
    pub revoked: Revoked,
    /// The CA that signs agents' certificates; without its key, hosts cannot enroll here.
    pub ca: Option<Arc<Ca>>,
}

impl Hosts {
    fn ca(&self) -> Result<&Ca, AdminError> {
        self.ca.as_deref().ok_or_else(|| {
            AdminError::Pki(
                "this collector has no CA key to sign with: give it ca.key, or issue agents' \
                 certificates with `recorder pki issue agent`"
                    .into(),
            )
        })
    }

    /// The certificate for `host` from `csr_pem`, and its serial.
    fn sign(&self, csr_pem: &str, host: &str) -> Result<(String, String, u64), AdminError> {
        let cert = self
            .ca()?
            .sign_agent_csr(
                csr_pem.as_bytes(),
                host,
                Validity::from_now(AGENT_CERT_LIFETIME),
            )
            .map_err(|e| AdminError::Pki(e.to_string()))?;
        let info = pki::CertInfo::from_pem(&cert).map_err(|e| AdminError::Pki(e.to_string()))?;
        let not_after = info
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Ok((cert, info.serial_hex, not_after))
    }

    fn response(&self, cert_pem: String, host: String, not_after: u64) -> EnrollResponse {
        EnrollResponse {
            cert_pem,
            ca_pem: self
                .ca
                .as_ref()
                .map(|ca| ca.cert_pem().to_owned())
                .unwrap_or_default(),
            host,
            not_after_unix_nano: not_after,
        }
    }
}

pub(crate) struct EnrollmentService(pub Hosts);

/// Why a token does not enroll `host` at `now`, if it does not.
fn token_refusal(token: Option<&TokenRow>, now: u64) -> Option<String> {
    let Some(token) = token else {
        return Some("the join token is not one this collector made".into());
    };
    if token.used_unix_nano != 0 {
        return Some(format!(
            "the join token for {} was used already, at {}",
            token.host,
            rfc3339_millis(token.used_unix_nano)
        ));
    }
    if token.expires_unix_nano <= now {
        return Some(format!(
            "the join token for {} expired at {}",
            token.host,
            rfc3339_millis(token.expires_unix_nano)
        ));
    }
    None
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let who = format!("enrollment from {}", remote(&request));
        let EnrollRequest {
            token,
            csr_pem,
            host: claimed,
        } = request.into_inner();
        let hash = token_hash(&token);
        let store = Arc::clone(&self.0.store);
        let found = blocking(move || store.token(&hash))
            .await
            .map_err(AdminError::from)?;
        let refusal = token_refusal(found.as_ref(), now_unix_nano()).or_else(|| {
            found.as_ref().filter(|t| t.host != claimed).map(|t| {
                format!(
                    "the join token is for host {}, and host {claimed:?} presented it",
                    t.host
                )
            })
        });
        if let Some(why) = refusal {
            self.0
                .gate
                .refused(&who, found.as_ref().map_or("", |t| t.host.as_str()), &why)
                .await;
            return Err(AdminError::Token(why).into());
        }
        let host = found.map(|t| t.host).unwrap_or_default();
        if self.0.revoked.contains(&host) {
            let why = format!("host {host} is revoked");
            self.0.gate.refused(&who, &host, &why).await;
            return Err(Status::permission_denied(why));
        }
        let (cert, serial, not_after) = self.0.sign(&csr_pem, &host)?;
        // Used in the same transaction as its act, and only if still unused then: two
        // enrollments with one token cannot both win.
        let act = self
            .0
            .writer
            .admin(
                Some(hash),
                Arc::new(move |current, now| {
                    if let Some(why) = token_refusal(current.as_ref(), now) {
                        return Err(AdminError::Token(why));
                    }
                    let token = current.map(|t| TokenRow {
                        used_unix_nano: now,
                        ..t
                    });
                    Ok(AdminChange {
                        token,
                        revoked: None,
                        hold: None,
                        act: AdminAct {
                            action: "host_enrolled".into(),
                            host: host.clone(),
                            actor: format!("token {}", &hex(&hash)[..16]),
                            detail: format!("certificate {serial}"),
                        },
                    })
                }),
            )
            .await;
        let act = match act {
            Ok(act) => act,
            Err(e @ AdminError::Token(_)) => {
                self.0.gate.refused(&who, "", &e.to_string()).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(self.0.response(cert, act.host, not_after)))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let caller = crate::auth::identify(&request)?;
        let Caller::Agent { host } = caller.clone() else {
            let why = "only an agent renews its certificate";
            self.0.gate.refused(&caller.name(), "", why).await;
            return Err(Status::permission_denied(why));
        };
        if self.0.revoked.contains(&host) {
            let why = format!("host {host} is revoked");
            self.0.gate.refused(&caller.name(), &host, &why).await;
            return Err(Status::permission_denied(why));
        }
        let (cert, serial, not_after) = self.0.sign(&request.into_inner().csr_pem, &host)?;
        let actor = caller.name();
        let act = self
            .0
            .writer
            .admin(
                None,
                Arc::new(move |_, _| {
                    Ok(AdminChange {
                        act: AdminAct {
                            action: "certificate_renewed".into(),
                            host: host.clone(),
                            actor: actor.clone(),
                            detail: format!("certificate {serial}"),
                        },
                        ..AdminChange::default()
                    })
                }),
            )
            .await?;
        Ok(Response::new(self.0.response(cert, act.host, not_after)))
    }
}

pub(crate) struct AdminService(pub Hosts);

#[tonic::async_trait]
impl Admin for AdminService {
    /// A legal hold: the session's records are never pruned (docs/evidence.md,
    /// "Retention"). Chained as an `admin` act `hold`.
    async fn hold(&self, request: Request<HoldRequest>) -> Result<Response<HoldResponse>, Status> {
        let caller = self
            .0
            .gate
            .operator(&request, Role::Admin, "holding a session")
            .await?;
        let HoldRequest {
            session,
            mut reason,
        } = request.into_inner();
        let key: proto::session::Key = session
            .parse()
            .map_err(|e| AdminError::Invalid(format!("session {session:?}: {e}")))?;
        reason.truncate(reason.floor_char_boundary(REASON_MAX));
        let actor = caller.name();
        self.0
            .writer
            .admin(
                None,
                Arc::new(move |_, now| {
                    Ok(AdminChange {
                        hold: Some(HoldRow {
                            session: session.clone(),
                            time_unix_nano: now,
                            actor: actor.clone(),
                            reason: reason.clone(),
                        }),
                        act: AdminAct {
                            action: "hold".into(),
                            host: key.host.clone(),
                            actor: actor.clone(),
                            detail: format!("{session} {reason}"),
                        },
                        ..AdminChange::default()
                    })
                }),
            )
            .await?;
        Ok(Response::new(HoldResponse {}))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = self
            .0
            .gate
            .operator(&request, Role::Admin, "making a join token")
            .await?;
        let CreateTokenRequest { host, ttl_millis } = request.into_inner();
        pki::check_name(&host).map_err(|e| AdminError::Invalid(format!("host: {e}")))?;
        let ttl = match ttl_millis {
            0 => TOKEN_TTL,
            ms => Duration::from_millis(ms),
        };
        if ttl > TOKEN_TTL_MAX {
            return Err(AdminError::Invalid(format!(
                "a join token lasts at most {}",
                humantime::format_duration(TOKEN_TTL_MAX)
            ))
            .into());
        }
        if self.0.revoked.contains(&host) {
            return Err(Status::failed_precondition(format!(
                "host {host} is revoked: it cannot enroll again under that id"
            )));
        }
        let token = Token::new(&host, ttl).map_err(|e| AdminError::Pki(e.to_string()))?;
        let hash = token.hash();
        let (creator, secret) = (caller.name(), token.secret.clone());
        let expires = now_unix_nano().saturating_add(proto::time::nanos(ttl));
        self.0
            .writer
            .admin(
                None,
                Arc::new(move |_, now| {
                    Ok(AdminChange {
                        token: Some(TokenRow {
                            hash,
                            host: host.clone(),
                            created_unix_nano: now,
                            expires_unix_nano: expires,
                            creator: creator.clone(),
                            used_unix_nano: 0,
                        }),
                        revoked: None,
                        hold: None,
                        act: AdminAct {
                            action: "token_created".into(),
                            host: host.clone(),
                            actor: creator.clone(),
                            detail: format!("expires {}", rfc3339_millis(expires)),
                        },
                    })
                }),
            )
            .await?;
        Ok(Response::new(CreateTokenResponse {
            token: secret,
            expires_unix_nano: expires,
        }))
    }

    async fn revoke_host(
        &self,
        request: Request<RevokeHostRequest>,
    ) -> Result<Response<RevokeHostResponse>, Status> {
        let caller = self
            .0
            .gate
            .operator(&request, Role::Admin, "revoking a host")
            .await?;
        let RevokeHostRequest { host, mut reason } = request.into_inner();
        pki::check_name(&host).map_err(|e| AdminError::Invalid(format!("host: {e}")))?;
        reason.truncate(reason.floor_char_boundary(REASON_MAX));
        let actor = caller.name();
        let revoked_host = host.clone();
        self.0
            .writer
            .admin(
                None,
                Arc::new(move |_, now| {
                    Ok(AdminChange {
                        token: None,
                        revoked: Some(RevokedHost {
                            host: host.clone(),
                            time_unix_nano: now,
                            actor: actor.clone(),
                            reason: reason.clone(),
                        }),
                        hold: None,
                        act: AdminAct {
                            action: "host_revoked".into(),
                            host: host.clone(),
                            actor: actor.clone(),
                            detail: reason.clone(),
                        },
                    })
                }),
            )
            .await?;
        self.0.revoked.insert(revoked_host);
        Ok(Response::new(RevokeHostResponse {}))
    }
}
