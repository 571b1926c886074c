//! What agents are told about grants: per host, the grants that apply there and the policy,
//! and a signal each time a grant changes.

use std::{sync::Arc, time::Duration};

use proto::{
    grant::applies_on,
    time::{nanos, now_unix_nano},
    v1::{GrantView, Policy},
};
use tokio::sync::watch;

use crate::store::{Store, StoreError, blocking};

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

    /// A receiver marked at every grant change from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// The view for `host`: every grant that applies on it and has not ended, or ended less
    /// than `VIEW_KEEPS_ENDED` ago; and the policy.
    pub(crate) async fn view(&self, host: &str) -> Result<GrantView, StoreError> {
        let now = now_unix_nano();
        let store = Arc::clone(&self.store);
        let since = now.saturating_sub(nanos(VIEW_KEEPS_ENDED));
        let grants = blocking(move || store.grants(since))
            .await?
            .into_iter()
            // A request is nothing to enforce until it is approved.
            .filter(|g| !g.pending && applies_on(g, host))
            .collect();
        Ok(GrantView {
            grants,
            policy: Some(self.policy.clone()),
            issued_unix_nano: now,
        })
    }
}
