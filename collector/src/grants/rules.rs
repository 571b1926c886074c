//! The grant rules, pure: what an operator may ask for, and the state machine of a grant
//! (docs/grants.md). A change is decided against the grant as it stands and a time, so the
//! writer can apply it to exactly what the commits before it left, and tests can drive it
//! without a store or a clock.

use proto::{
    grant::{State, state},
    time::rfc3339_millis,
    v1::{CreateGrantRequest, Grant, GrantChange, IdentitySelector, grant::OnExpiry, identity},
};

use crate::error::GrantError;

/// Bytes of an identity name, a host id, an approver, an actor or a grant id.
pub(crate) const MAX_NAME_BYTES: usize = 256;
/// Bytes of a reason.
const MAX_REASON_BYTES: usize = 1024;
/// Hosts one grant names.
const MAX_HOSTS: usize = 1024;
/// The latest time the store holds (its integers are signed).
const MAX_TIME: u64 = i64::MAX as u64;

fn invalid(message: impl Into<String>) -> GrantError {
    GrantError::Invalid(message.into())
}

pub(crate) fn bounded(what: &str, value: &str, max: usize) -> Result<(), GrantError> {
    if value.len() > max {
        return Err(invalid(format!(
            "{what} is {} bytes; at most {max}",
            value.len()
        )));
    }
    Ok(())
}

fn named(what: &str, value: &str) -> Result<(), GrantError> {
    if value.trim().is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    bounded(what, value, MAX_NAME_BYTES)
}

/// Checks a selector, as a grant or the policy carries one.
pub(crate) fn check_selector(selector: Option<&IdentitySelector>) -> Result<(), GrantError> {
    let Some(selector) = selector else {
        return Err(invalid(
            "identity is missing: a grant names a human, service, workload or registered identity",
        ));
    };
    match identity::Kind::try_from(selector.kind) {
        Ok(
            identity::Kind::Human
            | identity::Kind::Service
            | identity::Kind::Workload
            | identity::Kind::Registered,
        ) => {}
        _ => {
            return Err(invalid(format!(
                "identity kind {} is not one a grant can name: HUMAN, SERVICE, WORKLOAD or REGISTERED",
                selector.kind
            )));
        }
    }
    named("identity name", &selector.name)
}

/// The grant a Create or a Request asks for, checked, with the id `id`, asked for by
/// `requester` at `now`. A `pending` one waits for an approver; otherwise its requester is
/// its approver too.
pub(crate) fn new_grant(
    request: CreateGrantRequest,
    id: String,
    now: u64,
    requester: &str,
    pending: bool,
) -> Result<Grant, GrantError> {
    check_selector(request.identity.as_ref())?;
    if request.hosts.len() > MAX_HOSTS {
        return Err(invalid(format!(
            "{} hosts; a grant names at most {MAX_HOSTS}",
            request.hosts.len()
        )));
    }
    for host in &request.hosts {
        named("host", host)?;
    }
    bounded("reason", &request.reason, MAX_REASON_BYTES)?;
    let Ok(on_expiry @ (OnExpiry::Alert | OnExpiry::Kill)) = OnExpiry::try_from(request.on_expiry)
    else {
        return Err(invalid(format!(
            "on_expiry {} is neither ALERT nor KILL",
            request.on_expiry
        )));
    };
    if request.ttl_millis == 0 {
        return Err(invalid("ttl_millis must be more than 0"));
    }
    let not_before = match request.not_before_unix_nano {
        0 => now,
        t if t < now => {
            return Err(invalid(format!(
                "not_before {} is in the past: a grant cannot be backdated",
                rfc3339_millis(t)
            )));
        }
        t => t,
    };
    let expires = request
        .ttl_millis
        .checked_mul(1_000_000)
        .and_then(|ttl| not_before.checked_add(ttl))
        .filter(|t| *t <= MAX_TIME)
        .ok_or_else(|| {
            invalid(format!(
                "not_before {not_before} plus ttl_millis {} is past the year 2262",
                request.ttl_millis
            ))
        })?;
    if expires <= now {
        return Err(invalid(format!(
            "the grant would have ended at {}, before it is created",
            rfc3339_millis(expires)
        )));
    }
    Ok(Grant {
        id,
        identity: request.identity,
        hosts: request.hosts,
        not_before_unix_nano: not_before,
        expires_at_unix_nano: expires,
        reason: request.reason,
        approver: if pending {
            String::new()
        } else {
            requester.to_owned()
        },
        on_expiry: on_expiry.into(),
        created_unix_nano: now,
        revoked_unix_nano: 0,
        requester: requester.to_owned(),
        requested_unix_nano: now,
        pending,
    })
}

/// A change an operator asked for, checked. `Create` carries the whole new grant; the
/// others name the grant they change.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// A new grant: effective, or pending (a request).
    Create(Box<Grant>),
    Approve {
        id: String,
    },
    Revoke {
        id: String,
        reason: String,
    },
    Extend {
        id: String,
        nanos: u64,
    },
}

impl Op {
    pub(crate) fn revoke(id: String, reason: String) -> Result<Self, GrantError> {
        named("grant id", &id)?;
        bounded("reason", &reason, MAX_REASON_BYTES)?;
        Ok(Self::Revoke { id, reason })
    }

    pub(crate) fn extend(id: String, extend_millis: u64) -> Result<Self, GrantError> {
        named("grant id", &id)?;
        if extend_millis == 0 {
            return Err(invalid("extend_millis must be more than 0"));
        }
        let nanos = extend_millis
            .checked_mul(1_000_000)
            .ok_or_else(|| invalid(format!("extend_millis {extend_millis} is too large")))?;
        Ok(Self::Extend { id, nanos })
    }

    pub(crate) fn approve(id: String) -> Result<Self, GrantError> {
        named("grant id", &id)?;
        Ok(Self::Approve { id })
    }

    /// The id of the grant it makes or changes.
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Create(grant) => &grant.id,
            Self::Approve { id } | Self::Revoke { id, .. } | Self::Extend { id, .. } => id,
        }
    }

    /// Applies the change to the grant as it stands at `now` (`None`: no grant has the id),
    /// asked by `actor`: the record of the change, holding the grant as it becomes.
    pub(crate) fn apply(
        self,
        current: Option<Grant>,
        now: u64,
        actor: String,
    ) -> Result<GrantChange, GrantError> {
        let (action, grant, reason) = match self {
            Self::Create(grant) => {
                if current.is_some() {
                    return Err(GrantError::Exists(format!(
                        "a grant with the id {} exists already",
                        grant.id
                    )));
                }
                let action = if grant.pending { "request" } else { "create" };
                (action, *grant, String::new())
            }
            Self::Approve { id } => {
                let mut grant = live(&id, current, now)?;
                if !grant.pending {
                    return Err(GrantError::Ended(format!(
                        "grant {id} is not waiting for approval: {} approved it",
                        grant.approver
                    )));
                }
                if grant.requester == actor {
                    return Err(GrantError::Denied(format!(
                        "{actor} asked for grant {id}: someone else must approve it"
                    )));
                }
                // Its duration counts from the approval when that comes after the start
                // asked for: waiting for an approver does not use the grant up.
                if grant.not_before_unix_nano < now {
                    let duration = grant.expires_at_unix_nano - grant.not_before_unix_nano;
                    grant.not_before_unix_nano = now;
                    grant.expires_at_unix_nano = now.saturating_add(duration).min(MAX_TIME);
                }
                grant.pending = false;
                grant.approver.clone_from(&actor);
                grant.created_unix_nano = now;
                ("approve", grant, String::new())
            }
            Self::Revoke { id, reason } => {
                let mut grant = live(&id, current, now)?;
                grant.revoked_unix_nano = now;
                ("revoke", grant, reason)
            }
            Self::Extend { id, nanos } => {
                let mut grant = live(&id, current, now)?;
                grant.expires_at_unix_nano = grant
                    .expires_at_unix_nano
                    .checked_add(nanos)
                    .filter(|t| *t <= MAX_TIME)
                    .ok_or_else(|| {
                        invalid(format!(
                            "extending grant {id} by {nanos} ns would take it past the year 2262"
                        ))
                    })?;
                ("extend", grant, String::new())
            }
        };
        // The writer numbers the decision.
        Ok(GrantChange {
            action: action.into(),
            grant: Some(grant),
            actor,
            reason,
            decision: 0,
        })
    }
}

/// The grant of `id` as it stands, if it has not ended by `now`: only those change. A grant
/// that has not begun yet may still be revoked or extended.
fn live(id: &str, current: Option<Grant>, now: u64) -> Result<Grant, GrantError> {
    let grant =
        current.ok_or_else(|| GrantError::NotFound(format!("no grant has the id {id:?}")))?;
    let why = match state(&grant, now) {
        State::Requested | State::Pending | State::Live(_) => return Ok(grant),
        State::Revoked(at) => format!("it was revoked at {}", rfc3339_millis(at)),
        State::Expired => format!(
            "it expired at {}",
            rfc3339_millis(grant.expires_at_unix_nano)
        ),
    };
    Err(GrantError::Ended(format!(
        "grant {id} has already ended: {why}"
    )))
}

#[cfg(test)]
mod tests {
    use proto::v1::identity::Kind;

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

    fn revoke(reason: &str) -> Op {
        Op::revoke("g-1".into(), reason.into()).unwrap()
    }

    fn extend(millis: u64) -> Op {
        Op::extend("g-1".into(), millis).unwrap()
    }

    /// What `op` makes of `current` at `now`, or its refusal's message.
    fn apply(op: Op, current: Option<Grant>, now: u64) -> Result<GrantChange, GrantError> {
        op.apply(current, now, "dave".into())
    }

    #[test]
    fn a_live_or_pending_grant_is_revoked_or_extended_at_now() {
        let now = 5 * H;
        for current in [grant(0, 10 * H, 0), grant(6 * H, 10 * H, 0)] {
            let change = apply(revoke("done"), Some(current.clone()), now).unwrap();
            assert_eq!(
                (
                    change.action.as_str(),
                    change.actor.as_str(),
                    change.reason.as_str()
                ),
                ("revoke", "dave", "done")
            );
            assert_eq!(
                change.grant,
                Some(Grant {
                    revoked_unix_nano: now,
                    ..current.clone()
                })
            );
            let change = apply(extend(60_000), Some(current.clone()), now).unwrap();
            assert_eq!(change.action, "extend");
            assert_eq!(
                change.grant.unwrap().expires_at_unix_nano,
                10 * H + 60_000_000_000
            );
        }
    }

    #[test]
    fn an_ended_or_missing_grant_does_not_change() {
        let expired = grant(0, 4 * H, 0);
        let revoked = grant(0, 10 * H, 3 * H);
        for op in [revoke(""), extend(1)] {
            let Err(GrantError::Ended(why)) = apply(op, Some(expired.clone()), 5 * H) else {
                panic!("an expired grant changed")
            };
            assert_eq!(
                why,
                "grant g-1 has already ended: it expired at 1970-01-01T04:00:00.000Z"
            );
        }
        let Err(GrantError::Ended(why)) = apply(revoke(""), Some(revoked), 5 * H) else {
            panic!("a revoked grant was revoked again")
        };
        assert!(
            why.ends_with("it was revoked at 1970-01-01T03:00:00.000Z"),
            "{why}"
        );
        let Err(GrantError::NotFound(why)) = apply(extend(1), None, 0) else {
            panic!("a missing grant was extended")
        };
        assert_eq!(why, "no grant has the id \"g-1\"");
        let Err(GrantError::Invalid(why)) =
            apply(extend(u64::MAX / 1_000_000), Some(grant(0, 10 * H, 0)), H)
        else {
            panic!("extended past the store's times")
        };
        assert!(why.contains("past the year 2262"), "{why}");
    }

    #[test]
    fn a_grant_is_created_once() {
        let new = grant(0, H, 0);
        let change = apply(Op::Create(Box::new(new.clone())), None, 0).unwrap();
        assert_eq!(
            (change.action.as_str(), change.grant),
            ("create", Some(new.clone()))
        );
        let Err(GrantError::Exists(why)) = apply(Op::Create(Box::new(new.clone())), Some(new), 0)
        else {
            panic!("an id was taken twice")
        };
        assert_eq!(why, "a grant with the id g-1 exists already");
    }

    #[test]
    fn a_request_waits_for_someone_else_and_counts_from_the_approval() {
        let request = Grant {
            pending: true,
            requester: "ann".into(),
            requested_unix_nano: H,
            ..grant(H, 2 * H, 0)
        };
        let Err(GrantError::Denied(why)) =
            Op::approve("g-1".into())
                .unwrap()
                .apply(Some(request.clone()), H, "ann".into())
        else {
            panic!("the requester approved her own request")
        };
        assert_eq!(why, "ann asked for grant g-1: someone else must approve it");
        let approved = Op::approve("g-1".into())
            .unwrap()
            .apply(Some(request.clone()), 3 * H / 2, "bob".into())
            .unwrap();
        assert_eq!(approved.action, "approve");
        let g = approved.grant.unwrap();
        assert!(!g.pending);
        assert_eq!((g.requester.as_str(), g.approver.as_str()), ("ann", "bob"));
        assert_eq!(
            (
                g.not_before_unix_nano,
                g.expires_at_unix_nano,
                g.created_unix_nano
            ),
            (3 * H / 2, 5 * H / 2, 3 * H / 2),
            "the hour asked for, from the approval on"
        );
        let Err(GrantError::Ended(_)) =
            Op::approve("g-1".into())
                .unwrap()
                .apply(Some(g), 2 * H, "carl".into())
        else {
            panic!("approved twice")
        };
    }

    #[test]
    fn revoke_and_extend_check_what_they_are_asked() {
        assert!(
            matches!(Op::revoke(" ".into(), String::new()), Err(GrantError::Invalid(m)) if m.contains("grant id"))
        );
        assert!(
            matches!(Op::revoke("g".into(), "x".repeat(MAX_REASON_BYTES + 1)), Err(GrantError::Invalid(m)) if m.contains("reason"))
        );
        assert!(
            matches!(Op::extend("g".into(), 0), Err(GrantError::Invalid(m)) if m == "extend_millis must be more than 0")
        );
        assert!(
            matches!(Op::extend("g".into(), u64::MAX), Err(GrantError::Invalid(m)) if m.contains("too large"))
        );
    }

    fn good_request() -> CreateGrantRequest {
        CreateGrantRequest {
            identity: Some(IdentitySelector {
                kind: Kind::Human.into(),
                name: "alice".into(),
            }),
            ttl_millis: 60_000,
            on_expiry: OnExpiry::Kill.into(),
            reason: "CHG-1".into(),
            ..CreateGrantRequest::default()
        }
    }

    #[test]
    fn create_grants_what_it_is_asked() {
        let now = 100 * H;
        let good = good_request();
        let g = new_grant(good.clone(), "g-1".into(), now, "ann", false).unwrap();
        assert_eq!(g.id, "g-1");
        assert_eq!(g.not_before_unix_nano, now);
        assert_eq!(g.expires_at_unix_nano, now + 60_000_000_000);
        assert_eq!(g.created_unix_nano, now);
        assert_eq!(
            (g.requester.as_str(), g.approver.as_str(), g.pending),
            ("ann", "ann", false)
        );
        let r = new_grant(good.clone(), "g-2".into(), now, "ann", true).unwrap();
        assert_eq!(
            (r.requester.as_str(), r.approver.as_str(), r.pending),
            ("ann", "", true)
        );
    }

    #[test]
    fn create_refuses_bad_requests() {
        let now = 100 * H;
        let good = good_request();
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
                "cannot be backdated",
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
            let Err(GrantError::Invalid(refused)) =
                new_grant(request, "g-1".into(), now, "ann", false)
            else {
                panic!("{needle}: accepted")
            };
            assert!(refused.contains(needle), "{needle}: {refused}");
        }
    }
}
