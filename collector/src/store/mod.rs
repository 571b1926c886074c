//! The store: storage only, behind the one interface the writer, the query service, the
//! grants service and the chain verifier use, so a PostgreSQL backend can sit beside the
//! SQLite one without copying any of their rules. Calls block; async callers run them on the
//! blocking pool (`blocking`).

pub mod postgres;
mod sql;
pub mod sqlite;

use std::{ops::ControlFlow, sync::Arc};

use bytes::Bytes;
use proto::{
    kind::Kind,
    v1::{Grant, StoredEvent},
};

// The types verify reads rows as are the shared verifier's, so the store hands them over
// without a copy.
pub use verifier::{
    COLLECTOR_HOST, ChainRow, Columns,
    columns::{Derived, terminal},
};

/// A storage failure. Cloneable, so one failed group commit can answer every request in it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store {0:?}: expected sqlite://PATH or postgres://...")]
    Url(String),
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what} for the store's connection, {}: {why}", file.display())]
    Tls {
        what: &'static str,
        file: std::path::PathBuf,
        why: String,
    },
    #[error("store: {0}")]
    Backend(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The store's filesystem is full: nothing of the failed write is kept, and the same
    /// write succeeds once there is room (docs/limits.md).
    #[error("the store's disk is full: {0}")]
    Full(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

/// A commit that found what it was to move already moved by another writer: another
/// collector on the same database stored first. Nothing of the commit is kept.
#[derive(Debug, thiserror::Error)]
#[error("{what}: another writer moved it first; nothing was stored")]
pub(crate) struct Moved {
    what: String,
    /// The chain whose head had moved; `None`: a host's log had.
    chain: Option<String>,
}

impl StoreError {
    /// Whether the commit failed on a head or log another collector moved first.
    pub(crate) fn is_moved(&self) -> bool {
        self.moved().is_some()
    }

    /// The chain whose head another collector moved first, when the commit failed on one.
    pub(crate) fn moved_chain(&self) -> Option<&str> {
        self.moved()?.chain.as_deref()
    }

    fn moved(&self) -> Option<&Moved> {
        match self {
            Self::Backend(e) => e.downcast_ref::<Moved>(),
            _ => None,
        }
    }
}

impl Moved {
    /// A chain whose head is already at or past `seq`.
    pub(crate) fn chain(chain_id: &str, seq: u64) -> StoreError {
        StoreError::Backend(Arc::new(Self {
            what: format!("chain {chain_id} at seq {seq}"),
            chain: Some(chain_id.to_owned()),
        }))
    }

    /// The store's count of decisions, which another collector moved past `made`.
    pub(crate) fn decisions(made: u64) -> StoreError {
        StoreError::Backend(Arc::new(Self {
            what: format!("the store's decisions at {made}"),
            chain: None,
        }))
    }

    /// A host's log already past the size or cosigned size this commit sets.
    pub(crate) fn log(host: &str, size: u64) -> StoreError {
        StoreError::Backend(Arc::new(Self {
            what: format!("the log of host {host} at size {size}"),
            chain: None,
        }))
    }
}

/// Where a stored chain stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainState {
    pub chain_id: String,
    /// The host of the chain's `ChainStart`.
    pub host: String,
    pub next_seq: u64,
    /// `proto::chain::GENESIS` while the chain is empty.
    pub head_hash: [u8; 32],
}

/// A verified record and the columns queries select it by.
#[derive(Clone, Debug)]
pub struct Record {
    pub seq: u64,
    /// Its columns, as its bytes give them (`verifier::columns::derive`) or, for the
    /// collector's own records, as the writer makes them.
    pub derived: Derived,
    pub event: Bytes,
    pub hash: [u8; 32],
    /// Its leaf index in its host's log (docs/evidence.md); `None` for the collector's own
    /// records. The writer assigns it.
    pub log_index: Option<u64>,
}

impl Record {
    /// The bytes it holds in memory: its own, its event's and its columns' text.
    pub(crate) fn memory(&self) -> usize {
        let d = &self.derived;
        std::mem::size_of::<Self>()
            + self.event.len()
            + [&d.host, &d.session, &d.tty, &d.identity_name, &d.grant]
                .iter()
                .map(|text| text.len())
                .sum::<usize>()
            + d.fault.as_ref().map_or(0, String::len)
    }
}

/// Records that continue one chain.
#[derive(Debug)]
pub struct Append {
    pub chain_id: String,
    /// The chain's host, recorded with its first records.
    pub chain_host: String,
    pub records: Vec<Record>,
}

/// A record refused because the store holds a different one at its seq.
#[derive(Debug)]
pub struct Conflict {
    pub chain_id: String,
    pub seq: u64,
    pub event: Bytes,
    pub hash: Vec<u8>,
    pub stored_hash: Vec<u8>,
    pub received_unix_nano: u64,
}

/// A host's log as the writer leaves it after a commit: its leaves (as a compact range) and
/// the last checkpoint it cosigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRow {
    pub host: String,
    pub size: u64,
    /// The compact range of the `size` leaves (`tlog::CompactRange::to_bytes`).
    pub frontier: Vec<u8>,
    /// The last checkpoint cosigned: its size, root and note with both signatures; 0, the
    /// empty root and "" before the first.
    pub cosigned_size: u64,
    pub cosigned_root: [u8; 32],
    pub cosigned_note: String,
}

/// A host's checkpoint as the collector cosigned it, and the host certificate whose key
/// signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogCheckpoint {
    pub host: String,
    pub size: u64,
    pub root: [u8; 32],
    /// The note, with the host's signature and the collector's cosignature.
    pub note: String,
    pub cert_pem: String,
    pub received_unix_nano: u64,
}

/// A signed checkpoint that contradicts the stored log: kept as evidence, never cosigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkRow {
    pub host: String,
    pub size: u64,
    pub note: String,
    pub received_unix_nano: u64,
}

/// How far a host's log is pruned: leaves `0 .. end` are deleted, and `frontier` is their
/// compact range (`tlog::CompactRange::to_bytes`), from which the roots of the rest are
/// still computed. A convenience for exports: verify trusts only the signed prune records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneRow {
    pub host: String,
    pub end: u64,
    pub frontier: Vec<u8>,
}

/// A session exempt from pruning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRow {
    pub session: String,
    pub time_unix_nano: u64,
    pub actor: String,
    pub reason: String,
}

/// One leaf of a host's log as stored: the record it is, exactly as stored.
#[derive(Clone, Copy, Debug)]
pub struct LeafRow<'a> {
    pub log_index: u64,
    pub row: i64,
    pub chain_id: &'a str,
    pub seq: u64,
    pub event: &'a [u8],
    pub hash: &'a [u8],
    /// The columns stored beside the bytes.
    pub columns: Columns<'a>,
}

/// A join token (docs/pki.md): only its hash is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// The host it enrolls.
    pub host: String,
    pub created_unix_nano: u64,
    pub expires_unix_nano: u64,
    /// Who made it.
    pub creator: String,
    /// When it was used; 0 while it has not been.
    pub used_unix_nano: u64,
}

/// A host whose certificates are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedHost {
    pub host: String,
    pub time_unix_nano: u64,
    pub actor: String,
    pub reason: String,
}

/// Everything one group commit writes, in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    pub appends: Vec<Append>,
    pub conflicts: Vec<Conflict>,
    /// Grants as they are after a change, in the order of the changes; each replaces the
    /// stored grant of its id. Their `GrantChange` events are among `appends`, so a grant
    /// never changes without its record.
    pub grants: Vec<Grant>,
    /// Join tokens as they are after a change (made, used); each replaces the stored one of
    /// its hash. Their `AdminAct` events are among `appends`.
    pub tokens: Vec<TokenRow>,
    pub revoked_hosts: Vec<RevokedHost>,
    /// Hosts' logs as they are after the commit; each replaces the stored one of its host.
    pub logs: Vec<LogRow>,
    pub log_checkpoints: Vec<LogCheckpoint>,
    pub forks: Vec<ForkRow>,
    /// Logs pruned: their leaves before `end` are deleted, in the transaction that chains
    /// the prune record.
    pub prunes: Vec<PruneRow>,
    pub holds: Vec<HoldRow>,
    /// For a commit of decisions (grant changes, tokens used, hosts revoked, holds, prunes):
    /// the store's count of decisions as they were decided against, and as this commit
    /// leaves it. The commit fails when another collector moved the count first, so the
    /// decisions of every collector of the store are made one after another, each against
    /// what the one before it left.
    pub decisions: Option<Decisions>,
}

/// The store's count of decisions, before and after a commit (`Commit::decisions`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub made: u64,
    pub after: u64,
}

impl Commit {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.conflicts.is_empty()
            && self.grants.is_empty()
            && self.tokens.is_empty()
            && self.revoked_hosts.is_empty()
            && self.logs.is_empty()
            && self.log_checkpoints.is_empty()
            && self.forks.is_empty()
            && self.prunes.is_empty()
            && self.holds.is_empty()
    }
}

impl Record {
    /// Its columns, as stored.
    #[must_use]
    pub fn columns(&self) -> Columns<'_> {
        self.derived.columns()
    }
}

/// How far the events' row ids reach, read for a tail that follows them as they come.
///
/// A row id is taken when a row is written, not when its transaction commits. On
/// PostgreSQL the highest id taken may belong to a row not yet committed, and where several
/// writers commit at once (collectors sharing one database), a row may commit after a row
/// with a higher id was read; a reader that moved past either would never see it. Rows up
/// to `row` are settled (committed, or never to be) once no transaction older than
/// `settled_by` is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The highest row id taken so far, perhaps by a transaction still running.
    pub row: i64,
    /// Every transaction that took an id up to `row` is older than this one: past the
    /// newest ended and every running one.
    pub settled_by: u64,
    /// The oldest transaction still running when this was read; where ids are taken in
    /// commit order (`SQLite`, one writer at a time), `settled_by` and this are both 0.
    pub oldest_running: u64,
}

/// A host's latest contact with any collector on the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostContact {
    pub host: String,
    pub seen_unix_nano: u64,
    /// A collector raised `host_silent` for it after that contact.
    pub silent: bool,
}

/// A record of a session, as an evidence bundle carries it.
#[derive(Clone, Debug)]
pub struct SessionLeaf {
    pub chain_id: String,
    pub seq: u64,
    pub log_index: u64,
    pub event: Vec<u8>,
    pub hash: Vec<u8>,
}

/// How a grant was used: the events recorded under it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantUsage {
    pub events: u64,
    /// Times of the first and last of them; 0 without any.
    pub first_unix_nano: u64,
    pub last_unix_nano: u64,
}

/// The violation events of one identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Violations {
    pub identity_kind: i32,
    pub identity_name: String,
    pub count: u64,
    /// The newest few, newest first.
    pub newest: Vec<StoredEvent>,
}

/// Which session a filter selects: by its key as stored, or by its audit session id.
#[derive(Clone, Debug)]
pub enum SessionMatch {
    Key(String),
    Id(u32),
}

/// A query filter; `None` and empty match everything.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub host: Option<String>,
    pub identity: Option<String>,
    pub session: Option<SessionMatch>,
    /// Any of these kinds.
    pub kinds: Vec<Kind>,
    /// The terminal (`Record::tty`).
    pub tty: Option<String>,
    pub since_unix_nano: u64,
    /// 0: no upper bound.
    pub until_unix_nano: u64,
}

/// Where a time-ordered search resumes: after this (time, row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub time_unix_nano: u64,
    pub row: i64,
}

/// What frames a stored event in a response besides its stored bytes (event, hash, host,
/// chain id, session), at most: the tags and lengths of `StoredEvent`'s fields, its seq, and
/// its own tag and length in a repeated field. A backend that reckons a row's size from its
/// stored bytes before reading them adds this.
pub const EVENT_FRAMING: usize = 40;

/// How much one read of events returns: at most `rows` rows, and no row past the one that
/// would take their size, as each `StoredEvent` is encoded in a response, over `bytes`. The
/// first row is always returned, so every read makes progress; an event is at most 1 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub rows: usize,
    pub bytes: usize,
}

impl Bound {
    /// Whether a page of `taken` rows and `total` bytes has room for a row of `size` bytes.
    #[must_use]
    pub fn admits(self, taken: usize, total: usize, size: usize) -> bool {
        taken < self.rows && (taken == 0 || total.saturating_add(size) <= self.bytes)
    }

    /// How many of the rows of these sizes, in order, a page takes.
    #[must_use]
    pub fn take(self, sizes: impl IntoIterator<Item = usize>) -> usize {
        let (mut taken, mut total) = (0, 0usize);
        for size in sizes {
            if !self.admits(taken, total, size) {
                break;
            }
            (taken, total) = (taken + 1, total.saturating_add(size));
        }
        taken
    }
}

/// One bounded read: the rows, with where each one is, and whether the bound left matching
/// rows after them.
#[derive(Clone, Debug, Default)]
pub struct Page<C> {
    pub rows: Vec<(C, StoredEvent)>,
    pub more: bool,
}

/// Which sessions `Store::sessions` summarizes: those with events from `since_unix_nano`
/// on, of `host` (empty: any) or the one of `key`; in the order of their first event in
/// that window (time, then row), the first `limit` of them after `after`.
#[derive(Clone, Debug, Default)]
pub struct SessionQuery {
    pub host: String,
    pub key: Option<String>,
    pub since_unix_nano: u64,
    pub after: Cursor,
    pub limit: usize,
}

/// One session's columns, aggregated over its events from the query's `since` on; its first
/// event and login terminal are those of all its events, whatever the window, as they name
/// the session itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRow {
    pub key: String,
    pub host: String,
    /// Where the session stands in the order of `SessionQuery`: the time of its first event
    /// in the window and the lowest row of its events there.
    pub cursor: Cursor,
    pub first_unix_nano: u64,
    pub last_unix_nano: u64,
    pub events: u64,
    pub execs: u64,
    pub tty_bytes: u64,
    /// Kill events filed under the session: it was ended by a grant's end or a violation.
    pub kills: u64,
    /// The bytes of the session's first event (by time, then row): it names the session's
    /// root and identity.
    pub first_event: Vec<u8>,
    /// The `tty` of the session's first event (by time, then row) that has one.
    pub login_tty: String,
    /// Every terminal with tty events, by first use.
    pub terminals: Vec<TerminalRow>,
}

/// One terminal of a session: its tty events from the query's `since` on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TerminalRow {
    pub device: String,
    pub first_unix_nano: u64,
    pub last_unix_nano: u64,
    pub output_bytes: u64,
    pub input_bytes: u64,
    /// The bytes of its first `tty_in` event, whose process holds the master side; `None`
    /// when nothing was typed.
    pub first_input: Option<Vec<u8>>,
}

/// Storage: it keeps what it is given and reads it back by columns. The rules (what a chain
/// must be, what a grant change may do, what a session key means) live above it, once for
/// every backend.
pub trait Store: Send + Sync + 'static {
    /// Every stored chain, in the order each was first stored.
    fn chains(&self) -> Result<Vec<ChainState>, StoreError>;
    /// The stored chains of `host`, in the order each was first stored: read by host, so
    /// what a connecting agent costs does not grow with other hosts' chains.
    fn host_chains(&self, host: &str) -> Result<Vec<ChainState>, StoreError>;
    /// The stored first record (its `ChainStart`, as received) of each chain of `host` that
    /// still holds it: which record of the host's spool each chain says it started after.
    fn chain_starts(&self, host: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The stored hash of one record.
    fn hash_at(&self, chain_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes it all in one durable transaction.
    fn commit(&self, commit: &Commit) -> Result<(), StoreError>;
    /// The count of decisions the store's collectors made (`Commit::decisions`).
    fn decisions(&self) -> Result<u64, StoreError>;
    /// How far the row ids reach, and when every row up to there is settled.
    fn reach(&self) -> Result<Reach, StoreError>;
    /// Matching events stored after row `after` up to row `up_to`, in storage order, with
    /// their row ids, as much as `bound` lets one read hold.
    fn after_row(
        &self,
        filter: &EventFilter,
        after: i64,
        up_to: i64,
        bound: Bound,
    ) -> Result<Page<i64>, StoreError>;
    /// Matching events after `cursor`, oldest first, with their cursors, as much as `bound`
    /// lets one read hold.
    fn search(
        &self,
        filter: &EventFilter,
        after: Cursor,
        bound: Bound,
    ) -> Result<Page<Cursor>, StoreError>;
    /// Hands `each` the sessions `query` selects, in its order, until it breaks: one at a
    /// time, so that a caller keeps no more of their bytes than it wants.
    fn sessions(
        &self,
        query: &SessionQuery,
        each: &mut dyn FnMut(SessionRow) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    /// Hands `each` up to `limit` stored records of `chain_id` from seq `from_seq` on, in
    /// seq order, until it breaks. A page at a time, so no read holds the store for a whole
    /// chain.
    fn chain_rows(
        &self,
        chain_id: &str,
        from_seq: u64,
        limit: usize,
        each: &mut dyn FnMut(ChainRow<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    /// The size the chain's latest checkpoint claims, if it has one: checkpoints of single
    /// chains, as collectors before host logs stored them.
    fn last_checkpoint(&self, chain_id: &str) -> Result<Option<u64>, StoreError>;
    /// Every grant whose end (`proto::grant::end`) is later than `ended_after`, oldest
    /// first.
    fn grants(&self, ended_after: u64) -> Result<Vec<Grant>, StoreError>;
    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError>;
    /// The events recorded under grant `id`.
    fn grant_usage(&self, id: &str) -> Result<GrantUsage, StoreError>;
    /// Violation events from `since_unix_nano` on, per identity, each with its `newest` most
    /// recent ones.
    fn violations(
        &self,
        since_unix_nano: u64,
        newest: usize,
    ) -> Result<Vec<Violations>, StoreError>;
    /// The join token whose hash is `hash`.
    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError>;
    /// Every revoked host.
    fn revoked_hosts(&self) -> Result<Vec<RevokedHost>, StoreError>;
    /// Notes that each host was heard at its time, unless a collector has noted a later
    /// contact; one heard is no longer silent. `heard` names each host once.
    fn record_contacts(&self, heard: &[(String, u64)]) -> Result<(), StoreError>;
    /// Every host's latest contact noted, by whichever collector on this store heard it.
    fn contacts(&self) -> Result<Vec<HostContact>, StoreError>;
    /// Marks `host` silent, if its latest noted contact is still at `seen` (0: none noted)
    /// and no collector has marked it yet: whether this call did, so that of the
    /// collectors sharing the store one alone raises the alert.
    fn mark_silent(&self, host: &str, seen: u64) -> Result<bool, StoreError>;
    /// Every host's log.
    fn logs(&self) -> Result<Vec<LogRow>, StoreError>;
    /// One host's log.
    fn log(&self, host: &str) -> Result<Option<LogRow>, StoreError>;
    /// Hands `each` up to `limit` leaves of `host`'s log from index `from` on, in index
    /// order, until it breaks.
    fn log_leaves(
        &self,
        host: &str,
        from: u64,
        limit: usize,
        each: &mut dyn FnMut(LeafRow<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    /// Every cosigned checkpoint of `host`'s log, in the order they were cosigned.
    fn log_checkpoints(&self, host: &str) -> Result<Vec<LogCheckpoint>, StoreError>;
    /// How far `host`'s log is pruned.
    fn prune(&self, host: &str) -> Result<Option<PruneRow>, StoreError>;
    /// The first leaf of `host`'s log from `from` on that retention keeps: stored at or
    /// after `cutoff_unix_nano`, or of a held session. `None` when every one is older.
    fn first_kept(
        &self,
        host: &str,
        from: u64,
        cutoff_unix_nano: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// The records of session `key` that are leaves of a log, in log order.
    fn session_leaves(&self, key: &str) -> Result<Vec<SessionLeaf>, StoreError>;
    /// Every host with a cosigned checkpoint, whatever the `logs` table says.
    fn checkpointed_hosts(&self) -> Result<Vec<String>, StoreError>;
    /// Calls `each`, on a thread of its own, whenever another collector on the same database
    /// commits a change of that kind, and with every kind after the store was out of reach
    /// (whatever changed meanwhile went unheard). A store that cannot tell never calls it:
    /// the collector then learns of others' changes when it next reads them.
    fn follow_changes(&self, each: Box<dyn Fn(Changed) + Send>) -> Result<(), StoreError> {
        drop(each);
        Ok(())
    }
}

/// What another collector on the same database changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Grants,
    RevokedHosts,
}

impl Changed {
    /// Every kind, for when some change may have gone unheard.
    pub const ALL: [Self; 2] = [Self::Grants, Self::RevokedHosts];

    /// Its name in a PostgreSQL notification's payload.
    fn name(self) -> &'static str {
        match self {
            Self::Grants => "grants",
            Self::RevokedHosts => "revoked_hosts",
        }
    }
}

/// Runs a store call on the blocking pool. A call that panicked is a store failure too.
pub(crate) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let result = tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| StoreError::Backend(Arc::new(e)))
        .flatten();
    if let Err(e) = &result {
        tracing::error!(error = %e, "store call failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::Bound;

    #[test]
    fn a_page_stops_before_the_row_that_would_pass_its_bytes_but_takes_one_at_least() {
        let bound = Bound {
            rows: 3,
            bytes: 100,
        };
        assert_eq!(bound.take([40, 60, 1]), 2, "100 bytes fit, 101 do not");
        assert_eq!(bound.take([500, 1]), 1, "a row larger than the bound alone");
        assert_eq!(bound.take([1, 1, 1, 1]), 3, "the rows bound");
        assert_eq!(bound.take([]), 0);
        assert_eq!(bound.take([usize::MAX, usize::MAX]), 1, "no overflow");
    }
}
