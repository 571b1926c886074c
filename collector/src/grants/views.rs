//! What agents are told about grants: per host, the grants that apply there and the policy,
//! and a signal each time a grant changes.

use std::{collections::HashMap, sync::Arc, time::Duration};

use proto::{
    grant::applies_on,
    limits::VIEW_GRANTS_MAX,
    time::{nanos, now_unix_nano},
    v1::{Grant, GrantView, Policy},
};
use tokio::sync::watch;

use crate::{
    error::GrantError,
    store::{Store, StoreError, blocking},
};

/// A grant that ended this long ago is still in the views agents are sent, so an agent that
/// was away while it was revoked learns of the revocation explicitly.
const VIEW_KEEPS_ENDED: Duration = Duration::from_hours(1);

#[derive(Clone)]
pub(crate) struct Views {
    store: Arc<dyn Store>,
    policy: Policy,
    changed: watch::Sender<()>,
}

impl Views {
    /// `changed` is the writer's: marked after each commit that changed a grant.
    pub(crate) fn new(store: Arc<dyn Store>, policy: Policy, changed: watch::Sender<()>) -> Self {
        Self {
            store,
            policy,
            changed,
        }
    }

    /// Every grant a view made at `now` may hold (requests included, which an approval
    /// brings in).
    pub(crate) async fn in_view(&self, now: u64) -> Result<Vec<Grant>, StoreError> {
        let store = Arc::clone(&self.store);
        let since = now.saturating_sub(nanos(VIEW_KEEPS_ENDED));
        blocking(move || store.grants(since)).await
    }

    /// Refuses `grant` when some host it applies on would have more than
    /// `VIEW_GRANTS_MAX` grants in its view. A grant for every host counts against the
    /// busiest one.
    pub(crate) async fn check_room(&self, grant: &Grant) -> Result<(), GrantError> {
        let held = self.in_view(now_unix_nano()).await?;
        let everywhere = held.iter().filter(|g| g.hosts.is_empty()).count();
        let mut per_host: HashMap<&str, usize> = HashMap::new();
        for host in held.iter().flat_map(|g| &g.hosts) {
            *per_host.entry(host).or_default() += 1;
        }
        let busiest = if grant.hosts.is_empty() {
            per_host.into_iter().max_by_key(|(_, n)| *n)
        } else {
            grant
                .hosts
                .iter()
                .map(|h| (h.as_str(), per_host.get(h.as_str()).copied().unwrap_or(0)))
                .max_by_key(|(_, n)| *n)
        };
        let (host, n) = busiest.unwrap_or(("every host", 0));
        if everywhere + n >= VIEW_GRANTS_MAX {
            return Err(GrantError::Exhausted(format!(
                "{host} already has {} grants in force, pending or ended within the hour; at \
                 most {VIEW_GRANTS_MAX} apply on one host (docs/limits.md)",
                everywhere + n
            )));
        }
        Ok(())
    }

    /// A receiver marked at every grant change from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The view for `host`: every grant that applies on it and has not ended, or ended less
    /// than `VIEW_KEEPS_ENDED` ago; and the policy. A grant's other hosts are left out: the
    /// agent needs to know only that it applies there, and a view must stay under
    /// `VIEW_BYTES_MAX` (`proto::limits`) whatever the grants' host lists hold.
    pub(crate) async fn view(&self, host: &str) -> Result<GrantView, StoreError> {
        let now = now_unix_nano();
        let grants = self
            .in_view(now)
            .await?
            .into_iter()
            // A request is nothing to enforce until it is approved.
            .filter(|g| !g.pending && applies_on(g, host))
            .map(|mut g| {
                if !g.hosts.is_empty() {
                    g.hosts = vec![host.to_owned()];
                }
                g
            })
            .collect();
        Ok(GrantView {
            grants,
            policy: Some(self.policy.clone()),
            issued_unix_nano: now,
        })
    }
}
