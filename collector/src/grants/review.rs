//! The review of grants (`recorder review`): per identity, its grants and how each was used,
//! its violations, and which grants to revoke.

use std::{collections::BTreeMap, time::Duration};

use proto::{
    grant::{end, is_live},
    time::nanos,
    v1::{Grant, GrantUse, IdentityReview, IdentitySelector},
};

use crate::store::{Store, StoreError};

/// A live grant whose last use is older than this is reported "unused for ..." by a review.
const IDLE: Duration = Duration::from_hours(24);
/// Violations a review returns per identity.
const RECENT_VIOLATIONS: usize = 5;

/// Why to revoke a grant, or empty when the review does not recommend it.
fn revoke_because(grant: &Grant, events: u64, last_use: u64, now: u64) -> String {
    if events == 0 {
        return "never used".into();
    }
    let idle = now.saturating_sub(last_use);
    if is_live(grant, now) && idle > nanos(IDLE) {
        // Minutes are precise enough to act on, and keep the text short.
        let minutes = Duration::from_secs(idle / 1_000_000_000 / 60 * 60);
        return format!("unused for {}", humantime::format_duration(minutes));
    }
    String::new()
}

/// Per identity with grants that had not ended by `since`, or violations from `since` on:
/// its grants and their use, and its violations. Ordered by identity kind, then name.
pub(crate) fn review(
    store: &dyn Store,
    since: u64,
    now: u64,
) -> Result<Vec<IdentityReview>, StoreError> {
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

    fn grant(not_before: u64, expires: u64) -> Grant {
        Grant {
            id: "g-1".into(),
            not_before_unix_nano: not_before,
            expires_at_unix_nano: expires,
            ..Grant::default()
        }
    }

    #[test]
    fn review_recommends_revoking_unused_and_idle_grants_only() {
        let now = 100 * H;
        let live = grant(now - 50 * H, now + H);
        assert_eq!(revoke_because(&live, 0, 0, now), "never used");
        assert_eq!(
            revoke_because(&grant(0, H), 0, 0, now),
            "never used",
            "an ended grant never used"
        );
        assert_eq!(revoke_because(&live, 3, now - H, now), "");
        assert_eq!(
            revoke_because(&live, 3, now - 49 * H - 90_000_000_000, now),
            "unused for 2days 1h 1m"
        );
        assert_eq!(
            revoke_because(&grant(0, H), 3, 0, now),
            "",
            "an ended grant is not revoked again"
        );
    }
}
