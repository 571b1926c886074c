//! What a grant means, as every side reads it (docs/grants.md): the collector that stores
//! and sends grants and the agent that enforces them share these, so they cannot disagree
//! about when one ends or where it applies.

use crate::v1::Grant;

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

/// Whether it is live at `now`: begun and not ended.
#[must_use]
pub fn is_live(grant: &Grant, now: u64) -> bool {
    grant.not_before_unix_nano <= now && now < end(grant)
}

/// Whether it applies on `host`: it names no hosts, or names this one.
#[must_use]
pub fn applies_on(grant: &Grant, host: &str) -> bool {
    grant.hosts.is_empty() || grant.hosts.iter().any(|h| h == host)
}
