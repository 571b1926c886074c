//! What unit tests share: a SQLite store in a directory of its own, chains ingested into it
//! as an agent's would be (checked by `ingest::check`, committed whole), and raw access to
//! its file, as someone tampering with it would have.

use std::path::PathBuf;

use prost::Message as _;
use proto::{
    chain::Chain,
    v1::{ChainStart, Event, EventBatch, event::Body},
};

use crate::{
    ingest::check,
    store::{Append, Commit, Store, sqlite::Sqlite},
    writer::Batch,
};

pub(crate) struct TestStore {
    dir: tempfile::TempDir,
    pub store: Sqlite,
}

pub(crate) fn store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path().join("c.db").to_str().unwrap()).unwrap();
    TestStore { dir, store }
}

/// `events` chained on `chain` as an agent would send them, led by the chain's `ChainStart`
/// (host `host`, time 1) when the chain is new, and checked as the collector checks a batch.
pub(crate) fn batch(
    chain: &mut Chain,
    host: &str,
    events: impl IntoIterator<Item = Event>,
) -> Batch {
    let start = (chain.next_seq() == 0).then(|| Event {
        time_unix_nano: 1,
        body: Some(Body::ChainStart(ChainStart {
            host: host.into(),
            ..ChainStart::default()
        })),
        ..Event::default()
    });
    let events = start
        .into_iter()
        .chain(events)
        .map(|e| chain.record(e.encode_to_vec()))
        .collect();
    let batch = EventBatch {
        chain_id: chain.id().to_owned(),
        events,
    };
    check::batch(host, batch).unwrap()
}

impl TestStore {
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().join("c.db")
    }

    /// Stores a new chain of `host`: its `ChainStart` at time 1, then `events`. Returns the
    /// chain's records' hashes.
    pub(crate) fn ingest(&self, chain_id: &str, host: &str, events: &[Event]) -> Vec<[u8; 32]> {
        let batch = batch(
            &mut Chain::new(chain_id.into()),
            host,
            events.iter().cloned(),
        );
        let hashes = batch.records.iter().map(|r| r.hash).collect();
        self.store
            .commit(&Commit {
                appends: vec![Append {
                    chain_id: batch.chain_id,
                    chain_host: batch.host,
                    records: batch.records,
                }],
                ..Commit::default()
            })
            .unwrap();
        hashes
    }

    /// Stores a checkpoint of `chain_id` at `size`, as collectors before host logs did.
    pub(crate) fn checkpoint(&self, chain_id: &str, size: u64, head_hash: [u8; 32]) {
        rusqlite::Connection::open(self.path())
            .unwrap()
            .execute(
                "INSERT INTO checkpoints (chain, size, head_hash, time, received) \
                 SELECT id, ?2, ?3, 1, 1 FROM chains WHERE chain_id = ?1",
                rusqlite::params![chain_id, size, &head_hash[..]],
            )
            .unwrap();
    }

    /// Runs `sql` on the store's file through a connection of its own.
    pub(crate) fn sql(&self, sql: &str) {
        rusqlite::Connection::open(self.path())
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }
}
