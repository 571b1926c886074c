//! What a grant means, as every side reads it (docs/grants.md): the collector that stores
//! and sends grants, the agent that enforces them and the operators' client that shows them
//! share these, so they cannot disagree about when one ends or where it applies.

use crate::{identity::selects, v1::Grant, v1::identity::Kind};

/// When the grant ends: its expiry, or its revocation when that came first.
#[must_use]
pub fn end(grant: &Grant) -> u64 {
    match grant.revoked_unix_nano {
        0 => grant.expires_at_unix_nano,
        revoked => revoked.min(grant.expires_at_unix_nano),
    }
}

/// Whether it ended by revocation rather than expiry.
#[must_use]
pub fn revoked_first(grant: &Grant) -> bool {
    grant.revoked_unix_nano != 0 && grant.revoked_unix_nano <= grant.expires_at_unix_nano
}

/// Whether it is live at `now`: approved, begun and not ended.
#[must_use]
pub fn is_live(grant: &Grant, now: u64) -> bool {
    !grant.pending && grant.not_before_unix_nano <= now && now < end(grant)
}

/// Whether it applies on `host`: it names no hosts, or names this one.
#[must_use]
pub fn applies_on(grant: &Grant, host: &str) -> bool {
    grant.hosts.is_empty() || grant.hosts.iter().any(|h| h == host)
}

/// Whether it covers the identity of kind `kind` called `name` on `host` at `now`.
#[must_use]
pub fn covers(grant: &Grant, kind: Kind, name: &str, host: &str, now: u64) -> bool {
    is_live(grant, now)
        && applies_on(grant, host)
        && grant
            .identity
            .as_ref()
            .is_some_and(|s| selects(s, kind, name))
}

/// Where a grant stands at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Asked for, not yet approved.
    Requested,
    /// Approved, not yet begun.
    Pending,
    /// Live, with this many nanoseconds left.
    Live(u64),
    Expired,
    /// Revoked at this time (Unix nanoseconds).
    Revoked(u64),
}

#[must_use]
pub fn state(grant: &Grant, now: u64) -> State {
    if revoked_first(grant) && grant.revoked_unix_nano <= now {
        State::Revoked(grant.revoked_unix_nano)
    } else if grant.pending && end(grant) > now {
        State::Requested
    } else if end(grant) <= now {
        State::Expired
    } else if grant.not_before_unix_nano > now {
        State::Pending
    } else {
        State::Live(end(grant) - now)
    }
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
        assert_eq!(end(&grant(0, 10 * H, 12 * H)), 10 * H);
        assert_eq!(state(&grant(H, 10 * H, 0), 0), State::Pending);
        assert_eq!(state(&grant(0, 10 * H, 0), 9 * H), State::Live(H));
        assert_eq!(state(&grant(0, 10 * H, 0), 10 * H), State::Expired);
        assert_eq!(
            state(&grant(0, 10 * H, 4 * H), 5 * H),
            State::Revoked(4 * H)
        );
        assert_eq!(state(&grant(0, 10 * H, 12 * H), 11 * H), State::Expired);
    }
}
