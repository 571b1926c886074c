//! The store: the one interface the ingest writer, the query service and the grants service
//! use, so a `PostgreSQL` backend can sit beside the `SQLite` one. Calls block; async callers
//! run them on the blocking pool.

pub mod sqlite;

use proto::v1::{ChainVerdict, Grant, Session, StoredEvent};

/// The chain that holds the collector's own alerts and grant changes, so they are chained
/// evidence too. Agents' chain ids are `HOST:BOOT_ID:START`, so this one cannot collide.
pub const COLLECTOR_CHAIN: &str = "collector";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store {0:?}: expected sqlite://PATH")]
    Url(String),
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    /// The host the record is about: its chain's host, or for an alert the host it concerns.
    pub host: String,
    pub time_unix_nano: u64,
    pub kind: &'static str,
    /// `HOST:SESSIONID:ROOT_START`, empty outside an audit session.
    pub session: String,
    pub sessionid: Option<u32>,
    pub identity_kind: i32,
    pub identity_name: String,
    /// The grant the activity is covered by (`Identity.grant`); empty outside any.
    pub grant: String,
    pub tty_bytes: u64,
    pub event: Vec<u8>,
    pub hash: [u8; 32],
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
    pub event: Vec<u8>,
    pub hash: Vec<u8>,
    pub stored_hash: Vec<u8>,
    pub received_unix_nano: u64,
}

#[derive(Debug)]
pub struct CheckpointRow {
    pub chain_id: String,
    pub size: u64,
    pub head_hash: Vec<u8>,
    pub time_unix_nano: u64,
    pub received_unix_nano: u64,
}

/// Everything one group commit writes, in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    pub appends: Vec<Append>,
    pub checkpoints: Vec<CheckpointRow>,
    pub conflicts: Vec<Conflict>,
    /// Grants as they are after a change, in the order of the changes; each replaces the
    /// stored grant of its id. Their `GrantChange` events are among `appends`, so a grant
    /// never changes without its record.
    pub grants: Vec<Grant>,
}

impl Commit {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.checkpoints.is_empty()
            && self.conflicts.is_empty()
            && self.grants.is_empty()
    }
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

/// Which session a filter selects.
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
    pub kinds: Vec<String>,
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

pub trait Store: Send + Sync + 'static {
    /// Every stored chain, for the writer to continue from.
    fn chains(&self) -> Result<Vec<ChainState>, StoreError>;
    /// The stored hash of one record.
    fn hash_at(&self, chain_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes it all in one durable transaction; returns the highest row id stored so far.
    fn commit(&self, commit: &Commit) -> Result<i64, StoreError>;
    /// The highest row id stored.
    fn last_row(&self) -> Result<i64, StoreError>;
    /// Matching events stored after row `after` up to row `up_to`, in storage order, with
    /// their row ids.
    fn after_row(
        &self,
        filter: &EventFilter,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<(i64, StoredEvent)>, StoreError>;
    /// Matching events after `cursor`, oldest first, with their cursors.
    fn search(
        &self,
        filter: &EventFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<(Cursor, StoredEvent)>, StoreError>;
    /// Sessions with events since the given time, oldest first.
    fn sessions(&self, host: &str, since_unix_nano: u64) -> Result<Vec<Session>, StoreError>;
    /// Recomputes the chains of `host` (empty: all), or one chain.
    fn verify(&self, host: &str, chain_id: &str) -> Result<Vec<ChainVerdict>, StoreError>;
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
}

/// Opens the store a `--store` URL names.
pub fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(std::sync::Arc::new(sqlite::Sqlite::open(path)?)),
        _ => Err(StoreError::Url(url.to_owned())),
    }
}

/// Runs a store call on the blocking pool; a store failure is the collector's, not the
/// caller's.
pub async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| tonic::Status::internal(format!("store call failed: {e}")))?
        .map_err(|e| {
            tracing::error!(error = %e, "store call failed");
            tonic::Status::internal(e.to_string())
        })
}
