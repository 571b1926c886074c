//! The SQLite schema and its versions, counted in `PRAGMA user_version`. Opening brings any
//! older store to `VERSION` in one transaction, so a store is never half migrated:
//!
//! - 0: made before versions (with or without the `grant_id` column and `grants` table of
//!   grants), or new. `kind` says "tty" for both terminal directions, and there is no `tty`
//!   column.
//! - 1: `kind` is `proto::kind::Kind::name()` (`tty_out`, `tty_in`), and `tty` names each
//!   event's terminal (`store::terminal`), both re-derived from the stored bytes of older
//!   events.
//! - 2: join tokens (their hashes) and revoked hosts.
//! - 3: hosts' logs (docs/evidence.md): each agent record's `log_index`, each host's log
//!   state, its cosigned checkpoints with the certificates whose keys signed them, and the
//!   checkpoints refused as forks. Records stored before are in no log.
//! - 4: how far each log is pruned, and sessions on legal hold.
//! - 5: chains are found by host (a connecting agent's Welcome reads only its host's).
//! - 6: each host's latest contact with any collector on the store (`liveness`), and a
//!   count of grant changes, which other collectors on the store poll.

use prost::Message as _;
use proto::{kind::Kind, v1::Event};
use rusqlite::{Connection, Transaction, params};

/// The schema this collector reads and writes.
pub(super) const VERSION: i64 = 6;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS chains (
    id INTEGER PRIMARY KEY,
    chain_id TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    head_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    chain INTEGER NOT NULL REFERENCES chains(id),
    seq INTEGER NOT NULL,
    host TEXT NOT NULL,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    session TEXT NOT NULL,
    sessionid INTEGER,
    identity_kind INTEGER NOT NULL,
    identity_name TEXT NOT NULL,
    tty_bytes INTEGER NOT NULL,
    event BLOB NOT NULL,
    hash BLOB NOT NULL,
    grant_id TEXT NOT NULL DEFAULT '',
    tty TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    chain INTEGER NOT NULL REFERENCES chains(id),
    size INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    time INTEGER NOT NULL,
    received INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    chain INTEGER NOT NULL REFERENCES chains(id),
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    hash BLOB NOT NULL,
    stored_hash BLOB NOT NULL,
    received INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    ends INTEGER NOT NULL,
    body BLOB NOT NULL
);
";

/// What version 2 adds.
const TRUST: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    host TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    creator TEXT NOT NULL,
    used INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_hosts (
    host TEXT PRIMARY KEY,
    time INTEGER NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
";

/// What version 3 adds.
const LOGS: &str = "
CREATE TABLE IF NOT EXISTS logs (
    host TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    frontier BLOB NOT NULL,
    cosigned_size INTEGER NOT NULL,
    cosigned_root BLOB NOT NULL,
    cosigned_note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certs (
    hash BLOB PRIMARY KEY,
    pem TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS log_checkpoints (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    cert BLOB NOT NULL REFERENCES certs(hash),
    received INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS log_checkpoints_host ON log_checkpoints(host, id);
CREATE TABLE IF NOT EXISTS checkpoint_forks (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    size INTEGER NOT NULL,
    note TEXT NOT NULL,
    received INTEGER NOT NULL
);
";

/// What version 4 adds.
const RETENTION: &str = "
CREATE TABLE IF NOT EXISTS prunes (
    host TEXT PRIMARY KEY,
    end_index INTEGER NOT NULL,
    frontier BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS holds (
    session TEXT PRIMARY KEY,
    time INTEGER NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
";

/// What version 6 adds. `silent` is 1 once a collector raised `host_silent` after `seen`.
const CONTACTS: &str = "
CREATE TABLE IF NOT EXISTS contacts (
    host TEXT PRIMARY KEY,
    seen INTEGER NOT NULL,
    silent INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    kind TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
";

/// Made after the columns an older store gains, which some of them cover. Each one slows
/// ingest, so the partial ones cover only the few rows their queries read.
const INDEXES: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS events_chain_seq ON events(chain, seq);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_session ON events(session, time) WHERE session != '';
CREATE INDEX IF NOT EXISTS checkpoints_chain ON checkpoints(chain, id);
CREATE INDEX IF NOT EXISTS grants_ends ON grants(ends);
CREATE INDEX IF NOT EXISTS events_grant ON events(grant_id, time) WHERE grant_id != '';
CREATE INDEX IF NOT EXISTS events_violations ON events(identity_kind, identity_name, time)
    WHERE kind = 'violation';
";

/// Rows re-derived at a time: bounds the memory a migration holds, events being up to 1 MiB.
const MIGRATION_PAGE: i64 = 256;

#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("its schema version {0} is newer than this collector's ({VERSION})")]
    Newer(i64),
}

/// Brings the store to `VERSION`, or refuses one made by a newer collector.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let tx = conn.transaction()?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > VERSION {
        return Err(MigrateError::Newer(version));
    }
    if version < 1 {
        tx.execute_batch(TABLES)?;
        add_column(&tx, "grant_id", "TEXT NOT NULL DEFAULT ''")?;
        add_column(&tx, "tty", "TEXT NOT NULL DEFAULT ''")?;
        derive_kind_and_tty(&tx)?;
        tx.execute_batch(INDEXES)?;
    }
    if version < 2 {
        tx.execute_batch(TRUST)?;
    }
    if version < 3 {
        add_column(&tx, "log_index", "INTEGER")?;
        tx.execute_batch(LOGS)?;
        // An agent record's host is its chain's host, so (host, log_index) names a leaf.
        tx.execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS events_log ON events(host, log_index) \
             WHERE log_index IS NOT NULL;",
        )?;
    }
    if version < 4 {
        tx.execute_batch(RETENTION)?;
    }
    if version < 5 {
        tx.execute_batch("CREATE INDEX IF NOT EXISTS chains_host ON chains(host, id);")?;
    }
    if version < 6 {
        tx.execute_batch(CONTACTS)?;
    }
    if version < VERSION {
        tx.pragma_update(None, "user_version", VERSION)?;
    }
    Ok(tx.commit()?)
}

/// Adds a column to `events` that a store made before it lacks.
fn add_column(tx: &Transaction<'_>, name: &str, definition: &str) -> rusqlite::Result<()> {
    let has: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('events') WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    if !has {
        tx.execute_batch(&format!(
            "ALTER TABLE events ADD COLUMN {name} {definition}"
        ))?;
    }
    Ok(())
}

/// Version 0 to 1: the `kind` of "tty" rows and every row's `tty`, from the stored bytes as
/// ingest derives them now. Only derived columns change, never the hashed bytes. A row whose
/// bytes no longer decode (ingest decoded them, so the file was edited) keeps what it had.
fn derive_kind_and_tty(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let mut read =
        tx.prepare("SELECT id, kind, event FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let mut update = tx.prepare("UPDATE events SET kind = ?2, tty = ?3 WHERE id = ?1")?;
    let (mut after, mut derived, mut undecodable) = (0i64, 0u64, 0u64);
    loop {
        let page = read
            .query_map(params![after, MIGRATION_PAGE], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let Some((last, ..)) = page.last() else {
            break;
        };
        after = *last;
        for (id, kind, bytes) in page {
            let Ok(event) = Event::decode(bytes.as_slice()) else {
                undecodable += 1;
                continue;
            };
            let kind = match Kind::of(&event) {
                Some(derived) if kind == "tty" => derived.name(),
                _ => kind.as_str(),
            };
            let tty = crate::store::terminal(&event);
            update.execute(params![id, kind, tty])?;
            derived += 1;
        }
    }
    if derived + undecodable > 0 {
        tracing::info!(
            derived,
            undecodable,
            "store migrated to schema version 1: event kinds and terminals re-derived"
        );
    }
    if undecodable > 0 {
        tracing::warn!(
            undecodable,
            "stored events that no longer decode keep their kind and have no terminal"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proto::{
        chain::Chain,
        v1::{Exec, Grant, Process, Tty, event::Body, tty::Direction},
    };

    use super::*;
    use crate::store::{
        Append, Bound, Commit, Cursor, Derived, EventFilter, GrantUsage, Record, Store,
        sqlite::Sqlite,
    };

    /// The events table as a store made before versions had it: no `tty`, and with
    /// `grants` false, no `grant_id` either.
    fn legacy(path: &std::path::Path, grants: bool) -> Connection {
        let old = Connection::open(path).unwrap();
        old.execute_batch(
            "CREATE TABLE chains (id INTEGER PRIMARY KEY, chain_id TEXT NOT NULL UNIQUE,
                host TEXT NOT NULL, next_seq INTEGER NOT NULL, head_hash BLOB NOT NULL);
             CREATE TABLE events (id INTEGER PRIMARY KEY,
                chain INTEGER NOT NULL REFERENCES chains(id), seq INTEGER NOT NULL,
                host TEXT NOT NULL, time INTEGER NOT NULL, kind TEXT NOT NULL,
                session TEXT NOT NULL, sessionid INTEGER, identity_kind INTEGER NOT NULL,
                identity_name TEXT NOT NULL, tty_bytes INTEGER NOT NULL,
                event BLOB NOT NULL, hash BLOB NOT NULL);",
        )
        .unwrap();
        if grants {
            old.execute_batch(
                "ALTER TABLE events ADD COLUMN grant_id TEXT NOT NULL DEFAULT '';
                 CREATE TABLE grants (id TEXT PRIMARY KEY, created INTEGER NOT NULL,
                    ends INTEGER NOT NULL, body BLOB NOT NULL);",
            )
            .unwrap();
        }
        old
    }

    /// Stores `events` as chain `c` of host `h` the way a store before versions did, with
    /// the kind it wrote: "tty" for both directions.
    fn store_legacy(old: &Connection, events: &[(&str, Vec<u8>)]) -> Chain {
        let mut chain = Chain::new("c".into());
        let hashes: Vec<(u64, [u8; 32])> = events.iter().map(|(_, e)| chain.link(e)).collect();
        old.execute(
            "INSERT INTO chains VALUES (1, 'c', 'h', ?1, ?2)",
            params![chain.next_seq().cast_signed(), &chain.head()[..]],
        )
        .unwrap();
        for ((kind, bytes), (seq, hash)) in events.iter().zip(hashes) {
            old.execute(
                "INSERT INTO events (chain, seq, host, time, kind, session, sessionid, \
                 identity_kind, identity_name, tty_bytes, event, hash) \
                 VALUES (1, ?1, 'h', ?2, ?3, '', NULL, 1, 'alice', 0, ?4, ?5)",
                params![
                    seq.cast_signed(),
                    10 + seq.cast_signed(),
                    kind,
                    bytes,
                    &hash[..]
                ],
            )
            .unwrap();
        }
        chain
    }

    fn tty(direction: Direction, device: &str, data: &str) -> Vec<u8> {
        Event {
            body: Some(Body::Tty(Tty {
                direction: direction.into(),
                device: device.into(),
                data: bytes::Bytes::copy_from_slice(data.as_bytes()),
                ..Tty::default()
            })),
            ..Event::default()
        }
        .encode_to_vec()
    }

    fn kinds_and_ttys(store: &Sqlite) -> Vec<(String, String)> {
        let conn = Connection::open(&store.path).unwrap();
        let mut stmt = conn
            .prepare("SELECT kind, tty FROM events ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn seqs(store: &Sqlite, filter: &EventFilter) -> Vec<u64> {
        store
            .search(
                filter,
                Cursor::default(),
                Bound {
                    rows: 100,
                    bytes: usize::MAX,
                },
            )
            .unwrap()
            .rows
            .into_iter()
            .map(|(_, e)| e.seq)
            .collect()
    }

    /// A store from before versions: its "tty" rows become `tty_out` and `tty_in` by their
    /// bytes, every row gains its terminal, a row that no longer decodes keeps what it had,
    /// and `tty` filters find both directions again.
    #[test]
    fn tty_rows_of_an_unversioned_store_get_their_direction_and_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let exec = Event {
            process: Some(Process {
                tty: "136:0".into(),
                ..Process::default()
            }),
            body: Some(Body::Exec(Exec::default())),
            ..Event::default()
        };
        store_legacy(
            &legacy(&path, true),
            &[
                ("chain_start", Event::default().encode_to_vec()),
                ("exec", exec.encode_to_vec()),
                ("tty", tty(Direction::Output, "136:1", "out")),
                ("tty", tty(Direction::Input, "136:1", "in")),
                ("tty", tty(Direction::Unspecified, "", "?")),
                ("tty", b"\xff not an event".to_vec()),
            ],
        );

        let store = Sqlite::open(path.to_str().unwrap()).unwrap();
        let expected = [
            ("chain_start", ""),
            ("exec", "136:0"),
            ("tty_out", "136:1"),
            ("tty_in", "136:1"),
            ("tty_out", ""),
            ("tty", ""),
        ]
        .map(|(k, t)| (k.to_owned(), t.to_owned()));
        assert_eq!(kinds_and_ttys(&store), expected);
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);

        let by_kinds = |kinds: &[Kind]| EventFilter {
            kinds: kinds.to_vec(),
            ..EventFilter::default()
        };
        let tty = Kind::parse_filter("tty").unwrap();
        assert_eq!(seqs(&store, &by_kinds(tty)), [2, 3, 4]);
        assert_eq!(seqs(&store, &by_kinds(&[Kind::TtyIn])), [3]);
        let on_inner = EventFilter {
            tty: Some("136:1".into()),
            ..by_kinds(tty)
        };
        assert_eq!(seqs(&store, &on_inner), [2, 3]);
        let verdicts = crate::verify::verify_all(&store, None, "", "")
            .unwrap()
            .chains;
        assert!(verdicts[0].ok, "no hashed byte changed: {verdicts:?}");
        drop(store);
        // Opened again, it is not migrated again.
        let store = Sqlite::open(path.to_str().unwrap()).unwrap();
        assert_eq!(kinds_and_ttys(&store), expected);
    }

    /// A store of version 3, before retention, gains its tables and keeps its logs.
    #[test]
    fn a_store_before_retention_gains_its_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        drop(Sqlite::open(path.to_str().unwrap()).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE prunes; DROP TABLE holds; PRAGMA user_version = 3;")
            .unwrap();
        let store = Sqlite::open(path.to_str().unwrap()).unwrap();
        assert_eq!(store.prune("h").unwrap(), None);
        assert_eq!(store.first_kept("h", 0, 0).unwrap(), None);
        assert!(store.logs().unwrap().is_empty());
    }

    /// A store of version 4 gains the index Welcome finds a host's chains by.
    #[test]
    fn a_store_before_chains_by_host_gains_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        drop(Sqlite::open(path.to_str().unwrap()).unwrap());
        let indexed = |conn: &Connection| -> bool {
            conn.query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'index' AND name = 'chains_host'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let old = Connection::open(&path).unwrap();
        old.execute_batch("DROP INDEX chains_host; PRAGMA user_version = 4;")
            .unwrap();
        assert!(!indexed(&old));
        drop(old);
        drop(Sqlite::open(path.to_str().unwrap()).unwrap());
        assert!(indexed(&Connection::open(&path).unwrap()));
    }

    #[test]
    fn a_store_of_a_newer_collector_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        drop(Sqlite::open(path.to_str().unwrap()).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        let Err(e) = Sqlite::open(path.to_str().unwrap()) else {
            panic!("opened a newer store")
        };
        let e = e.to_string();
        assert!(
            e.contains("new.db") && e.contains("newer than this collector's"),
            "{e}"
        );
    }

    /// A store made before grants (no `events.grant_id`, no `grants` table) opens, keeps
    /// verifying, and records grant use from then on.
    #[test]
    fn a_store_from_before_grants_opens_and_records_grant_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let start = Event {
            time_unix_nano: 10,
            ..Event::default()
        };
        let mut chain = store_legacy(
            &legacy(&path, false),
            &[("chain_start", start.encode_to_vec())],
        );

        let store = Sqlite::open(path.to_str().unwrap()).unwrap();
        assert_eq!(store.chains().unwrap()[0].next_seq, 1);
        let used = Event {
            time_unix_nano: 20,
            ..Event::default()
        }
        .encode_to_vec();
        let (seq, hash) = chain.link(&used);
        let second = Record {
            seq,
            derived: Derived {
                identity_kind: 1,
                identity_name: "alice".into(),
                grant: "g-1".into(),
                ..Derived::bare("h".into(), 20, Kind::Exec)
            },
            event: used.into(),
            hash,
            log_index: None,
        };
        store
            .commit(&Commit {
                appends: vec![Append {
                    chain_id: "c".into(),
                    chain_host: "h".into(),
                    records: vec![second],
                }],
                grants: vec![Grant {
                    id: "g-1".into(),
                    expires_at_unix_nano: 100,
                    ..Grant::default()
                }],
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(
            store.grant_usage("g-1").unwrap(),
            GrantUsage {
                events: 1,
                first_unix_nano: 20,
                last_unix_nano: 20
            }
        );
        assert_eq!(
            store.grant_usage("").unwrap().events,
            0,
            "no grant is not a grant"
        );
        assert_eq!(store.grants(99).unwrap().len(), 1);
        assert!(store.grants(100).unwrap().is_empty(), "ended by then");
        let verdicts = crate::verify::verify_all(&store, None, "", "")
            .unwrap()
            .chains;
        assert!(verdicts[0].ok && verdicts[0].records == 2, "{verdicts:?}");
        drop(store);
        // And it opens again, as a store made now does.
        assert_eq!(
            Sqlite::open(path.to_str().unwrap())
                .unwrap()
                .grant_usage("g-1")
                .unwrap()
                .events,
            1
        );
    }
}
