//! Retention (docs/evidence.md, "Retention"): asks the writer, now and every minute, to
//! prune each host's log of the records older than the host's limit. The writer decides
//! how far, and chains the signed prune record (`prune`) in the same transaction.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    store::{Store, blocking},
    writer::WriterHandle,
};

/// How often the limits are applied.
const EVERY: Duration = Duration::from_mins(1);

/// How long records are kept: `default` for every host but those with a limit of their own.
#[derive(Clone, Debug, Default)]
pub struct Retention {
    pub default: Option<Duration>,
    pub per_host: HashMap<String, Duration>,
}

impl Retention {
    fn limit(&self, host: &str) -> Option<Duration> {
        self.per_host.get(host).copied().or(self.default)
    }

    fn is_set(&self) -> bool {
        self.default.is_some() || !self.per_host.is_empty()
    }
}

/// Applies the limits now and every `EVERY`, for as long as the collector runs.
pub(crate) async fn run(retention: Retention, store: Arc<dyn Store>, writer: WriterHandle) {
    if !retention.is_set() {
        return;
    }
    loop {
        let logs = {
            let store = Arc::clone(&store);
            blocking(move || store.logs()).await
        };
        for log in logs.into_iter().flatten() {
            let Some(limit) = retention.limit(&log.host) else {
                continue;
            };
            let cutoff = proto::time::now_unix_nano()
                .saturating_sub(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX));
            if let Err(error) = writer.prune(log.host.clone(), cutoff).await {
                tracing::error!(host = %log.host, %error, "cannot prune the log");
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}
