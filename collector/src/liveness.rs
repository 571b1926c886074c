//! Which hosts are alive. Every message on a host's ingest stream is contact; agents send a
//! heartbeat every few seconds, so a quiet host still speaks. A host the collector has not
//! heard from for `--silent-after` is `silent`: the collector chains a `host_silent` alert
//! in its own chain, and `host_back` when the host speaks again. An agent that is killed,
//! or a host that is cut off, is thereby on record, not merely absent.
//!
//! The state lives in memory. At start, every host the store holds records of is taken as
//! last heard at that moment: one that never reconnects goes silent like any other.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use proto::v1::{Alert, Hello, HostLiveness, event::Body};

use crate::writer::{Own, WriterHandle};

/// How often silence is looked for.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Contact {
    last: Instant,
    /// Wall-clock time of the last contact; 0 when none since the collector started.
    last_unix_nano: u64,
    version: String,
    /// The display name of its last Hello.
    name: String,
    streams: u32,
    silent: bool,
}

impl Contact {
    /// A host taken as heard now, of which nothing else is known yet.
    fn now() -> Self {
        Self {
            last: Instant::now(),
            last_unix_nano: 0,
            version: String::new(),
            name: String::new(),
            streams: 0,
            silent: false,
        }
    }
}

pub(crate) struct Liveness {
    hosts: Mutex<HashMap<String, Contact>>,
    silent_after: Duration,
}

impl Liveness {
    /// Knows `hosts` (those the store holds records of) as last heard now.
    pub(crate) fn new(hosts: impl IntoIterator<Item = String>, silent_after: Duration) -> Self {
        let hosts = hosts.into_iter().map(|h| (h, Contact::now())).collect();
        Self {
            hosts: Mutex::new(hosts),
            silent_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Contact>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `host` spoke: returns whether it had been silent.
    pub(crate) fn heard(&self, host: &str) -> bool {
        let mut hosts = self.lock();
        let contact = hosts.entry(host.to_owned()).or_insert_with(Contact::now);
        contact.last = Instant::now();
        contact.last_unix_nano = proto::time::now_unix_nano();
        std::mem::take(&mut contact.silent)
    }

    /// A stream opened with `hello`: returns whether its host had been silent.
    pub(crate) fn connected(&self, hello: &Hello) -> bool {
        let back = self.heard(&hello.host);
        if let Some(contact) = self.lock().get_mut(&hello.host) {
            contact.streams += 1;
            hello.agent_version.clone_into(&mut contact.version);
            hello.host_name.clone_into(&mut contact.name);
        }
        back
    }

    pub(crate) fn disconnected(&self, host: &str) {
        if let Some(contact) = self.lock().get_mut(host) {
            contact.streams = contact.streams.saturating_sub(1);
        }
    }

    /// The hosts that have just gone silent, with how long since each was heard.
    fn newly_silent(&self) -> Vec<(String, Duration)> {
        let mut silent = Vec::new();
        for (host, contact) in self.lock().iter_mut() {
            let quiet = contact.last.elapsed();
            if !contact.silent && quiet >= self.silent_after {
                contact.silent = true;
                silent.push((host.clone(), quiet));
            }
        }
        silent
    }

    /// Every known host's state, by name; `head` gives each its newest stored chain.
    pub(crate) fn statuses(
        &self,
        mut head: impl FnMut(&str) -> Option<proto::v1::ChainHead>,
    ) -> Vec<HostLiveness> {
        let mut statuses: Vec<HostLiveness> = self
            .lock()
            .iter()
            .map(|(host, c)| HostLiveness {
                host: host.clone(),
                state: if c.silent { "silent" } else { "live" }.into(),
                last_contact_unix_nano: c.last_unix_nano,
                agent_version: c.version.clone(),
                streams: c.streams,
                head: None,
                name: c.name.clone(),
            })
            .collect();
        statuses.sort_by(|a, b| a.host.cmp(&b.host));
        for status in &mut statuses {
            status.head = head(&status.host);
        }
        statuses
    }
}

/// The alert chained when `host` goes silent or comes back.
pub(crate) fn alert(kind: &str, host: &str, message: String) -> Own {
    Own::alert(
        host,
        Body::Alert(Alert {
            kind: kind.into(),
            host: host.into(),
            message,
            ..Alert::default()
        }),
    )
}

/// Chains `host_silent` for each host as it goes silent, until the writer is gone.
pub(crate) async fn watch(liveness: Arc<Liveness>, writer: WriterHandle) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        for (host, quiet) in liveness.newly_silent() {
            tracing::warn!(host, quiet_s = quiet.as_secs(), "host silent");
            let message = format!(
                "nothing heard from it for {} s (the limit is {} s): its agent is stopped, \
                 killed or cut off",
                quiet.as_secs(),
                liveness.silent_after.as_secs()
            );
            if writer
                .record(alert("host_silent", &host, message))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
