//! Just-in-time grants (grants.proto): the Grants service operators call, the checks on what
//! they ask, the view of its host's grants each agent is sent, and the review of how grants
//! were used. docs/grants.md describes the model.

use std::{
    collections::BTreeMap,
    io::Read as _,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use proto::{
    grant::{applies_on, end, revoked_first},
    v1::{
        CreateGrantRequest, ExtendGrantRequest, Grant, GrantUse, GrantView, IdentityReview,
        IdentitySelector, ListGrantsRequest, ListGrantsResponse, Policy, ReviewRequest,
        ReviewResponse, RevokeGrantRequest, grant::OnExpiry, grants_server, identity::Kind,
    },
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::{
    store::{Store, StoreError, blocking},
    writer::{GrantOp, WriterHandle},
};

/// Bytes of an identity name, a host id, an approver, an actor or a grant id.
pub const MAX_NAME_BYTES: usize = 256;
/// Bytes of a reason.
pub const MAX_REASON_BYTES: usize = 1024;
/// Hosts one grant names.
pub const MAX_HOSTS: usize = 1024;
/// The latest time the store holds (its integers are signed).
pub const MAX_TIME: u64 = i64::MAX as u64;
/// A grant that ended this long ago is still in the views agents are sent, so an agent that
/// was away while it was revoked learns of the revocation explicitly.
pub const VIEW_KEEPS_ENDED: Duration = Duration::from_hours(1);
/// A live grant whose last use is older than this is reported "unused for ..." by a review.
pub const IDLE: Duration = Duration::from_hours(24);
/// Violations a review returns per identity.
const RECENT_VIOLATIONS: usize = 5;
/// The request header that says who asks for a change.
pub const ACTOR_HEADER: &str = "x-recorder-actor";

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[must_use]
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| nanos(d).min(MAX_TIME))
}

fn rfc3339(unix_nano: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(unix_nano)).to_string()
}

/// Why the grant is over at `now`, or `None` while it is not.
#[must_use]
pub fn ended(grant: &Grant, now: u64) -> Option<String> {
    if end(grant) > now {
        None
    } else if revoked_first(grant) {
        Some(format!(
            "it was revoked at {}",
            rfc3339(grant.revoked_unix_nano)
        ))
    } else {
        Some(format!(
            "it expired at {}",
            rfc3339(grant.expires_at_unix_nano)
        ))
    }
}

fn bounded(what: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what} is {} bytes; at most {max}",
            value.len()
        )));
    }
    Ok(())
}

fn named(what: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what} must not be empty"
        )));
    }
    bounded(what, value, MAX_NAME_BYTES)
}

/// Checks a selector, as a grant or the policy carries one.
pub fn check_selector(selector: Option<&IdentitySelector>) -> Result<(), Status> {
    let Some(selector) = selector else {
        return Err(Status::invalid_argument(
            "identity is missing: a grant names a human, service, workload or registered identity",
        ));
    };
    match Kind::try_from(selector.kind) {
        Ok(Kind::Human | Kind::Service | Kind::Workload | Kind::Registered) => {}
        _ => {
            return Err(Status::invalid_argument(format!(
                "identity kind {} is not one a grant can name: HUMAN, SERVICE, WORKLOAD or REGISTERED",
                selector.kind
            )));
        }
    }
    named("identity name", &selector.name)
}

/// A fresh grant id: `g-` and 16 hex digits from the kernel's random source.
fn new_id() -> Result<String, Status> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Status::internal(format!("cannot read /dev/urandom for a grant id: {e}")))?;
    Ok(format!("g-{:016x}", u64::from_be_bytes(bytes)))
}

/// The grant a Create asks for, checked.
fn new_grant(request: CreateGrantRequest, now: u64) -> Result<Grant, Status> {
    check_selector(request.identity.as_ref())?;
    if request.hosts.len() > MAX_HOSTS {
        return Err(Status::invalid_argument(format!(
            "{} hosts; a grant names at most {MAX_HOSTS}",
            request.hosts.len()
        )));
    }
    for host in &request.hosts {
        named("host", host)?;
    }
    bounded("reason", &request.reason, MAX_REASON_BYTES)?;
    bounded("approver", &request.approver, MAX_NAME_BYTES)?;
    let Ok(on_expiry @ (OnExpiry::Alert | OnExpiry::Kill)) = OnExpiry::try_from(request.on_expiry)
    else {
        return Err(Status::invalid_argument(format!(
            "on_expiry {} is neither ALERT nor KILL",
            request.on_expiry
        )));
    };
    if request.ttl_millis == 0 {
        return Err(Status::invalid_argument("ttl_millis must be more than 0"));
    }
    let not_before = match request.not_before_unix_nano {
        0 => now,
        t => t,
    };
    let expires = request
        .ttl_millis
        .checked_mul(1_000_000)
        .and_then(|ttl| not_before.checked_add(ttl))
        .filter(|t| *t <= MAX_TIME)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "not_before {not_before} plus ttl_millis {} is past the year 2262",
                request.ttl_millis
            ))
        })?;
    if expires <= now {
        return Err(Status::invalid_argument(format!(
            "the grant would have ended at {}, before it is created",
            rfc3339(expires)
        )));
    }
    Ok(Grant {
        id: new_id()?,
        identity: request.identity,
        hosts: request.hosts,
        not_before_unix_nano: not_before,
        expires_at_unix_nano: expires,
        reason: request.reason,
        approver: request.approver,
        on_expiry: on_expiry.into(),
        created_unix_nano: now,
        revoked_unix_nano: 0,
    })
}

/// Who asks, from the request's `x-recorder-actor` header; "unknown" without one.
fn actor<T>(request: &Request<T>) -> Result<String, Status> {
    let Some(value) = request.metadata().get(ACTOR_HEADER) else {
        return Ok("unknown".into());
    };
    let actor = value
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("{ACTOR_HEADER} is not printable ASCII")))?;
    if actor.trim().is_empty() {
        return Ok("unknown".into());
    }
    bounded(ACTOR_HEADER, actor, MAX_NAME_BYTES)?;
    Ok(actor.to_owned())
}

fn check_id(id: &str) -> Result<(), Status> {
    named("grant id", id)
}

/// What agents are told about grants: the policy, the store's grants, and a signal each time
/// a grant changes.
#[derive(Clone)]
pub struct Views {
    store: Arc<dyn Store>,
    policy: Policy,
    changed: watch::Sender<()>,
}

impl Views {
    /// `changed` is the writer's: marked after each commit that changed a grant.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, policy: Policy, changed: watch::Sender<()>) -> Self {
        Self {
            store,
            policy,
            changed,
        }
    }

    /// A receiver marked at every grant change from now on.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The view for `host`: every grant that applies on it and has not ended, or ended less
    /// than `VIEW_KEEPS_ENDED` ago; and the policy.
    pub async fn view(&self, host: &str) -> Result<GrantView, Status> {
        let now = now();
        let store = Arc::clone(&self.store);
        let since = now.saturating_sub(nanos(VIEW_KEEPS_ENDED));
        let grants = blocking(move || store.grants(since))
            .await?
            .into_iter()
            .filter(|g| applies_on(g, host))
            .collect();
        Ok(GrantView {
            grants,
            policy: Some(self.policy.clone()),
            issued_unix_nano: now,
        })
    }
}

pub struct GrantsService {
    store: Arc<dyn Store>,
    writer: WriterHandle,
}

impl GrantsService {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, writer: WriterHandle) -> Self {
        Self { store, writer }
    }
}

#[tonic::async_trait]
impl grants_server::Grants for GrantsService {
    async fn create(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let actor = actor(&request)?;
        let grant = new_grant(request.into_inner(), now())?;
        let grant = self
            .writer
            .change_grant(GrantOp::Create(Box::new(grant)), actor)
            .await?;
        Ok(Response::new(grant))
    }

    async fn list(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        let ended_after = if request.into_inner().include_ended {
            0
        } else {
            now()
        };
        let store = Arc::clone(&self.store);
        let grants = blocking(move || store.grants(ended_after)).await?;
        Ok(Response::new(ListGrantsResponse { grants }))
    }

    async fn revoke(
        &self,
        request: Request<RevokeGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let actor = actor(&request)?;
        let RevokeGrantRequest { id, reason } = request.into_inner();
        check_id(&id)?;
        bounded("reason", &reason, MAX_REASON_BYTES)?;
        let grant = self
            .writer
            .change_grant(GrantOp::Revoke { id, reason }, actor)
            .await?;
        Ok(Response::new(grant))
    }

    async fn extend(
        &self,
        request: Request<ExtendGrantRequest>,
    ) -> Result<Response<Grant>, Status> {
        let actor = actor(&request)?;
        let ExtendGrantRequest { id, extend_millis } = request.into_inner();
        check_id(&id)?;
        if extend_millis == 0 {
            return Err(Status::invalid_argument(
                "extend_millis must be more than 0",
            ));
        }
        let nanos = extend_millis.checked_mul(1_000_000).ok_or_else(|| {
            Status::invalid_argument(format!("extend_millis {extend_millis} is too large"))
        })?;
        let grant = self
            .writer
            .change_grant(GrantOp::Extend { id, nanos }, actor)
            .await?;
        Ok(Response::new(grant))
    }

    async fn review(
        &self,
        request: Request<ReviewRequest>,
    ) -> Result<Response<ReviewResponse>, Status> {
        let since = request.into_inner().since_unix_nano;
        let store = Arc::clone(&self.store);
        let identities = blocking(move || review(store.as_ref(), since, now())).await?;
        Ok(Response::new(ReviewResponse { identities }))
    }
}

/// Why to revoke a grant, or empty when the review does not recommend it.
fn revoke_because(grant: &Grant, events: u64, last_use: u64, now: u64) -> String {
    if events == 0 {
        return "never used".into();
    }
    let live = grant.not_before_unix_nano <= now && end(grant) > now;
    let idle = now.saturating_sub(last_use);
    if live && idle > nanos(IDLE) {
        // Minutes are precise enough to act on, and keep the text short.
        let minutes = Duration::from_secs(idle / 1_000_000_000 / 60 * 60);
        return format!("unused for {}", humantime::format_duration(minutes));
    }
    String::new()
}

/// Per identity with grants that had not ended by `since`, or violations from `since` on:
/// its grants and their use, and its violations. Ordered by identity kind, then name.
fn review(store: &dyn Store, since: u64, now: u64) -> Result<Vec<IdentityReview>, StoreError> {
    fn entry(
        identities: &mut BTreeMap<(i32, String), IdentityReview>,
        selector: IdentitySelector,
    ) -> &mut IdentityReview {
        identities
            .entry((selector.kind, selector.name.clone()))
            .or_insert_with(|| IdentityReview {
                identity: Some(selector),
                ..IdentityReview::default()
            })
    }
    let mut identities = BTreeMap::new();
    for grant in store.grants(since)? {
        let usage = store.grant_usage(&grant.id)?;
        let review = entry(&mut identities, grant.identity.clone().unwrap_or_default());
        review.granted_nanos = review.granted_nanos.saturating_add(
            end(&grant)
                .min(now)
                .saturating_sub(grant.not_before_unix_nano),
        );
        review.grants.push(GrantUse {
            revoke_because: revoke_because(&grant, usage.events, usage.last_unix_nano, now),
            grant: Some(grant),
            events: usage.events,
            first_use_unix_nano: usage.first_unix_nano,
            last_use_unix_nano: usage.last_unix_nano,
        });
    }
    for v in store.violations(since, RECENT_VIOLATIONS)? {
        let review = entry(
            &mut identities,
            IdentitySelector {
                kind: v.identity_kind,
                name: v.identity_name,
            },
        );
        review.violations = v.count;
        review.recent_violations = v.newest;
    }
    Ok(identities.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000_000_000;

    fn grant(not_before: u64, expires: u64, revoked: u64) -> Grant {
        Grant {
            id: "g-1".into(),
            not_before_unix_nano: not_before,
            expires_at_unix_nano: expires,
            revoked_unix_nano: revoked,
            ..Grant::default()
        }
    }

    #[test]
    fn a_grant_ends_at_its_expiry_or_its_earlier_revocation() {
        assert_eq!(end(&grant(0, 10 * H, 0)), 10 * H);
        assert_eq!(end(&grant(0, 10 * H, 4 * H)), 4 * H);
        assert!(ended(&grant(0, 10 * H, 0), 9 * H).is_none());
        assert!(
            ended(&grant(0, 10 * H, 0), 10 * H)
                .unwrap()
                .contains("expired")
        );
        assert!(
            ended(&grant(0, 10 * H, 4 * H), 5 * H)
                .unwrap()
                .contains("revoked")
        );
    }

    #[test]
    fn review_recommends_revoking_unused_and_idle_grants_only() {
        let now = 100 * H;
        let live = grant(now - 50 * H, now + H, 0);
        assert_eq!(revoke_because(&live, 0, 0, now), "never used");
        assert_eq!(
            revoke_because(&grant(0, H, 0), 0, 0, now),
            "never used",
            "an ended grant never used"
        );
        assert_eq!(revoke_because(&live, 3, now - H, now), "");
        assert_eq!(
            revoke_because(&live, 3, now - 49 * H - 90_000_000_000, now),
            "unused for 2days 1h 1m"
        );
        assert_eq!(
            revoke_because(&grant(0, H, 0), 3, 0, now),
            "",
            "an ended grant is not revoked again"
        );
    }

    #[test]
    fn create_checks_what_it_is_asked() {
        let now = 100 * H;
        let good = CreateGrantRequest {
            identity: Some(IdentitySelector {
                kind: Kind::Human.into(),
                name: "alice".into(),
            }),
            ttl_millis: 60_000,
            on_expiry: OnExpiry::Kill.into(),
            reason: "CHG-1".into(),
            ..CreateGrantRequest::default()
        };
        let g = new_grant(good.clone(), now).unwrap();
        assert!(g.id.starts_with("g-") && g.id.len() == 18, "{}", g.id);
        assert_eq!(g.not_before_unix_nano, now);
        assert_eq!(g.expires_at_unix_nano, now + 60_000_000_000);
        assert_eq!(g.created_unix_nano, now);
        assert_ne!(new_grant(good.clone(), now).unwrap().id, g.id);
        let bad = [
            (
                CreateGrantRequest {
                    identity: None,
                    ..good.clone()
                },
                "identity is missing",
            ),
            (
                CreateGrantRequest {
                    identity: Some(IdentitySelector {
                        kind: Kind::Unknown.into(),
                        name: "x".into(),
                    }),
                    ..good.clone()
                },
                "kind",
            ),
            (
                CreateGrantRequest {
                    identity: Some(IdentitySelector {
                        kind: Kind::Human.into(),
                        name: String::new(),
                    }),
                    ..good.clone()
                },
                "identity name",
            ),
            (
                CreateGrantRequest {
                    ttl_millis: 0,
                    ..good.clone()
                },
                "ttl_millis",
            ),
            (
                CreateGrantRequest {
                    ttl_millis: u64::MAX,
                    ..good.clone()
                },
                "2262",
            ),
            (
                CreateGrantRequest {
                    not_before_unix_nano: now - 2 * H,
                    ..good.clone()
                },
                "before it is created",
            ),
            (
                CreateGrantRequest {
                    on_expiry: 0,
                    ..good.clone()
                },
                "on_expiry",
            ),
            (
                CreateGrantRequest {
                    hosts: vec![String::new()],
                    ..good.clone()
                },
                "host",
            ),
            (
                CreateGrantRequest {
                    reason: "x".repeat(MAX_REASON_BYTES + 1),
                    ..good.clone()
                },
                "reason",
            ),
        ];
        for (request, needle) in bad {
            let refused = new_grant(request, now).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
            assert!(refused.message().contains(needle), "{needle}: {refused}");
        }
    }
}
