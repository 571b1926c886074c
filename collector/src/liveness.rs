//! Which hosts are alive. Every message on a host's ingest stream is contact; agents send a
//! heartbeat every few seconds, so a quiet host still speaks. A host not heard from for
//! `--silent-after` is `silent`: a collector chains a `host_silent` alert in its own chain,
//! and `host_back` when the host speaks to it again. An agent that is killed, or a host that
//! is cut off, is thereby on record, not merely absent.
//!
//! Collectors sharing a store share what they heard: each notes its hosts' latest contacts
//! in the store every second, and reads everyone's, so a host served by another collector is
//! not silent, and `hosts` through any of them lists the hosts of all. Of the collectors that
//! find a host silent, the one that marks it so in the store first raises the alert.
//!
//! At start, every host the store holds records of is taken as last heard at that moment,
//! unless the store says it was heard later: one that never reconnects goes silent like any
//! other, and one already marked silent is not alerted twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use proto::v1::{Alert, Hello, HostLiveness, event::Body};

use crate::{
    store::{HostContact, Store, blocking},
    writer::{Own, WriterHandle},
};

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
    /// Heard since its contact was last noted in the store.
    unnoted: bool,
    /// Its latest contact noted in the store, by any collector, when last read; 0 when none.
    noted_unix_nano: u64,
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
            unnoted: false,
            noted_unix_nano: 0,
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
        contact.unnoted = true;
        std::mem::take(&mut contact.silent)
    }

    /// The contacts heard since they were last taken, to be noted in the store.
    fn unnoted(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter_mut()
            .filter_map(|(host, c)| {
                std::mem::take(&mut c.unnoted).then(|| (host.clone(), c.last_unix_nano))
            })
            .collect()
    }

    /// Takes in the contacts every collector noted: a later one than this collector's own
    /// is the host's last contact, silent or not; a host no one has heard since it was
    /// marked silent is silent here too.
    fn merge(&self, noted: Vec<HostContact>) {
        let now = proto::time::now_unix_nano();
        let mut hosts = self.lock();
        for row in noted {
            let ago = Duration::from_nanos(now.saturating_sub(row.seen_unix_nano));
            let at = Instant::now().checked_sub(ago);
            let contact = hosts.entry(row.host).or_insert_with(|| Contact {
                // One known only from the store: heard when it says, or now if it says none.
                last: at.unwrap_or_else(Instant::now),
                last_unix_nano: row.seen_unix_nano,
                ..Contact::now()
            });
            contact.noted_unix_nano = row.seen_unix_nano;
            if let Some(at) = at.filter(|at| *at > contact.last) {
                contact.last = at;
                contact.last_unix_nano = row.seen_unix_nano;
                contact.silent = row.silent;
            } else if row.silent && contact.last_unix_nano <= row.seen_unix_nano {
                contact.silent = true;
            }
        }
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

    /// The hosts not heard from for `silent_after` and not yet silent, each with its
    /// latest contact noted in the store.
    fn quiet(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter()
            .filter(|(_, c)| !c.silent && c.last.elapsed() >= self.silent_after)
            .map(|(host, c)| (host.clone(), c.noted_unix_nano))
            .collect()
    }

    /// Marks `host` silent unless it spoke meanwhile: how long since it was heard, if so.
    fn silence(&self, host: &str) -> Option<Duration> {
        let mut hosts = self.lock();
        let contact = hosts.get_mut(host)?;
        let quiet = contact.last.elapsed();
        if contact.silent || quiet < self.silent_after {
            return None;
        }
        contact.silent = true;
        Some(quiet)
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

/// Every second, notes this collector's contacts in the store and reads every
/// collector's; chains `host_silent` for each host as it goes silent, until the writer is
/// gone. A store out of reach leaves this collector with what it heard itself.
pub(crate) async fn watch(liveness: Arc<Liveness>, store: Arc<dyn Store>, writer: WriterHandle) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let heard = liveness.unnoted();
        if !heard.is_empty() {
            let s = Arc::clone(&store);
            // Logged by `blocking`; the next contacts are noted at the next tick.
            let _ = blocking(move || s.record_contacts(&heard)).await;
        }
        let s = Arc::clone(&store);
        if let Ok(noted) = blocking(move || s.contacts()).await {
            liveness.merge(noted);
        }
        for (host, noted) in liveness.quiet() {
            let (s, h) = (Arc::clone(&store), host.clone());
            // Without the store, this collector raises it: better twice than never.
            let first = blocking(move || s.mark_silent(&h, noted))
                .await
                .unwrap_or(true);
            let Some(quiet) = liveness.silence(&host) else {
                continue;
            };
            if !first {
                tracing::info!(host, "host silent, raised by another collector");
                continue;
            }
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
