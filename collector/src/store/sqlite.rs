//! The `SQLite` backend: WAL with `synchronous=FULL`, so a commit that returned survives a
//! power cut. One connection writes (the writer task's); readers take pooled connections and
//! see committed data only.

use std::sync::{Mutex, PoisonError};

use prost::Message as _;
use proto::{
    chain::{GENESIS, chain_hash},
    v1::{ChainVerdict, Event, Grant, Identity, Session, StoredEvent},
};
use rusqlite::{
    Connection, OptionalExtension as _, params, params_from_iter,
    types::{Type, Value},
};

use super::{
    ChainState, Commit, Cursor, EventFilter, GrantUsage, SessionMatch, Store, StoreError,
    Violations,
};

const SCHEMA: &str = "
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
    grant_id TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS events_chain_seq ON events(chain, seq);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_session ON events(session, time) WHERE session != '';
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    chain INTEGER NOT NULL REFERENCES chains(id),
    size INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    time INTEGER NOT NULL,
    received INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_chain ON checkpoints(chain, id);
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
CREATE INDEX IF NOT EXISTS grants_ends ON grants(ends);
";

/// Indexes over columns a store made before grants gains only in `migrate`, so they are
/// made after it.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS events_grant ON events(grant_id, time) WHERE grant_id != '';
CREATE INDEX IF NOT EXISTS events_violations ON events(identity_kind, identity_name, time)
    WHERE kind = 'violation';
";

/// The columns a `StoredEvent` is made of, in this order.
const STORED_COLUMNS: &str = "SELECT e.id, e.time, e.host, c.chain_id, e.seq, e.session, e.event, e.hash \
     FROM events e JOIN chains c ON c.id = e.chain WHERE ";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// Values are bounded at ingest to what `SQLite`'s signed integers hold.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub struct Sqlite {
    path: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn connect(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Reading the journal mode is the first access to the file: a file that is not SQLite
    // fails here, before anything is written to it.
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl Sqlite {
    pub fn open(path: &str) -> Result<Self, StoreError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| failed(Box::new(e)))?;
        }
        let writer = connect(path)
            .and_then(|mut c| migrate(&mut c).map(|()| c))
            .map_err(|e| failed(Box::new(e)))?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&conn);
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        Ok(out?)
    }
}

/// Creates what is missing: a new store whole, and in a store made before grants the
/// `events.grant_id` column (empty for the events stored then) and the grants table.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    let has_grant: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('events') WHERE name = 'grant_id'",
        [],
        |r| r.get(0),
    )?;
    if !has_grant {
        tx.execute_batch("ALTER TABLE events ADD COLUMN grant_id TEXT NOT NULL DEFAULT ''")?;
    }
    tx.execute_batch(INDEXES)?;
    tx.commit()
}

fn decode_grant(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Grant> {
    Grant::decode(row.get_ref(column)?.as_blob()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Blob, Box::new(e)))
}

/// Appends the filter's conditions (each preceded by AND) and their arguments.
fn filter_sql(f: &EventFilter, sql: &mut String, args: &mut Vec<Value>) {
    if let Some(host) = &f.host {
        sql.push_str(" AND e.host = ?");
        args.push(Value::Text(host.clone()));
    }
    if let Some(identity) = &f.identity {
        sql.push_str(" AND e.identity_name = ?");
        args.push(Value::Text(identity.clone()));
    }
    match &f.session {
        Some(SessionMatch::Key(key)) => {
            sql.push_str(" AND e.session = ?");
            args.push(Value::Text(key.clone()));
        }
        Some(SessionMatch::Id(id)) => {
            sql.push_str(" AND e.sessionid = ?");
            args.push(Value::Integer(i64::from(*id)));
        }
        None => {}
    }
    if !f.kinds.is_empty() {
        sql.push_str(" AND e.kind IN (");
        for (i, kind) in f.kinds.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            args.push(Value::Text(kind.clone()));
        }
        sql.push(')');
    }
    if f.since_unix_nano > 0 {
        sql.push_str(" AND e.time >= ?");
        args.push(Value::Integer(int(f.since_unix_nano)));
    }
    if f.until_unix_nano > 0 {
        sql.push_str(" AND e.time < ?");
        args.push(Value::Integer(int(f.until_unix_nano)));
    }
}

/// Reads a row of `STORED_COLUMNS`. A stored event that no longer decodes (the file was
/// edited) is returned without its body rather than hiding the row.
fn stored_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Cursor, StoredEvent)> {
    let cursor = Cursor {
        row: row.get(0)?,
        time_unix_nano: uint(row.get(1)?),
    };
    let bytes = row.get_ref(6)?.as_blob()?;
    Ok((
        cursor,
        StoredEvent {
            host: row.get(2)?,
            chain_id: row.get(3)?,
            seq: uint(row.get(4)?),
            session: row.get(5)?,
            event: Event::decode(bytes).ok(),
            hash: row.get(7)?,
        },
    ))
}

fn query_stored(
    conn: &Connection,
    sql: &str,
    args: &[Value],
) -> rusqlite::Result<Vec<(Cursor, StoredEvent)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.query_map(params_from_iter(args), stored_event)?
        .collect()
}

struct ChainRow {
    id: i64,
    chain_id: String,
    host: String,
    next_seq: u64,
    head_hash: Vec<u8>,
}

fn verify_chain(conn: &Connection, chain: &ChainRow) -> rusqlite::Result<ChainVerdict> {
    let checkpoint: Option<u64> = conn
        .query_row(
            "SELECT size FROM checkpoints WHERE chain = ?1 ORDER BY id DESC LIMIT 1",
            [chain.id],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(uint);
    let expected_size = chain.next_seq.max(checkpoint.unwrap_or(0));
    let mut verdict = ChainVerdict {
        host: chain.host.clone(),
        chain_id: chain.chain_id.clone(),
        ok: false,
        records: 0,
        first_bad_seq: None,
        reason: String::new(),
        expected_size,
    };
    let mut stmt = conn
        .prepare_cached("SELECT id, seq, event, hash FROM events WHERE chain = ?1 ORDER BY seq")?;
    let mut rows = stmt.query([chain.id])?;
    let mut expected = 0u64;
    let mut prev = GENESIS;
    let mut prev_row = i64::MIN;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let seq = uint(row.get(1)?);
        verdict.records += 1;
        if seq != expected {
            verdict.first_bad_seq = Some(expected);
            verdict.reason = format!("seq {expected} is missing (the next stored seq is {seq})");
            return Ok(verdict);
        }
        let hash = chain_hash(&chain.chain_id, seq, &prev, row.get_ref(2)?.as_blob()?);
        if hash[..] != *row.get_ref(3)?.as_blob()? {
            // Within a chain, storage order is seq order: a row stored out of place had its
            // seq changed, which is a different tampering from edited bytes.
            let next_row: Option<i64> = rows.next()?.map(|r| r.get(0)).transpose()?;
            let reordered = id < prev_row || next_row.is_some_and(|n| n < id);
            verdict.first_bad_seq = Some(seq);
            verdict.reason = if reordered {
                format!(
                    "seq {seq} is reordered: the record stored there belongs elsewhere in the chain"
                )
            } else {
                format!("the hash of seq {seq} does not recompute from its stored bytes")
            };
            return Ok(verdict);
        }
        prev = hash;
        prev_row = id;
        expected += 1;
    }
    verdict.records = expected;
    if expected < expected_size {
        let claims = match (
            chain.next_seq == expected_size,
            checkpoint == Some(expected_size),
        ) {
            (true, true) => "the recorded head and the last checkpoint claim",
            (true, false) => "the recorded head claims",
            _ => "the last checkpoint claims",
        };
        verdict.first_bad_seq = Some(expected);
        verdict.reason = format!(
            "{expected} records stored, but {claims} {expected_size}: records are missing from the tail"
        );
    } else if expected == chain.next_seq && chain.head_hash != prev {
        verdict.first_bad_seq = Some(expected.saturating_sub(1));
        "the last record's hash differs from the recorded head".clone_into(&mut verdict.reason);
    } else {
        verdict.ok = true;
    }
    Ok(verdict)
}

impl Store for Sqlite {
    fn chains(&self) -> Result<Vec<ChainState>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare("SELECT chain_id, host, next_seq, head_hash FROM chains")?;
            stmt.query_map([], |r| {
                let head: Vec<u8> = r.get(3)?;
                Ok(ChainState {
                    chain_id: r.get(0)?,
                    host: r.get(1)?,
                    next_seq: uint(r.get(2)?),
                    head_hash: head.try_into().unwrap_or(GENESIS),
                })
            })?
            .collect()
        })
    }

    fn hash_at(&self, chain_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT e.hash FROM events e JOIN chains c ON c.id = e.chain \
                 WHERE c.chain_id = ?1 AND e.seq = ?2",
            )?
            .query_row(params![chain_id, int(seq)], |r| r.get(0))
            .optional()
        })
    }

    fn commit(&self, commit: &Commit) -> Result<i64, StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction()?;
        {
            let mut chain = tx.prepare_cached(
                "INSERT INTO chains (chain_id, host, next_seq, head_hash) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (chain_id) DO UPDATE SET next_seq = excluded.next_seq, \
                 head_hash = excluded.head_hash RETURNING id",
            )?;
            let mut event = tx.prepare_cached(
                "INSERT INTO events (chain, seq, host, time, kind, session, sessionid, \
                 identity_kind, identity_name, tty_bytes, event, hash, grant_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for append in &commit.appends {
                let Some(last) = append.records.last() else {
                    continue;
                };
                let id: i64 = chain.query_row(
                    params![
                        append.chain_id,
                        append.chain_host,
                        int(last.seq + 1),
                        &last.hash[..]
                    ],
                    |r| r.get(0),
                )?;
                for r in &append.records {
                    event.execute(params![
                        id,
                        int(r.seq),
                        r.host,
                        int(r.time_unix_nano),
                        r.kind,
                        r.session,
                        r.sessionid,
                        r.identity_kind,
                        r.identity_name,
                        int(r.tty_bytes),
                        r.event,
                        &r.hash[..],
                        r.grant,
                    ])?;
                }
            }
            let mut checkpoint = tx.prepare_cached(
                "INSERT INTO checkpoints (chain, size, head_hash, time, received) \
                 SELECT id, ?2, ?3, ?4, ?5 FROM chains WHERE chain_id = ?1",
            )?;
            for c in &commit.checkpoints {
                checkpoint.execute(params![
                    c.chain_id,
                    int(c.size),
                    c.head_hash,
                    int(c.time_unix_nano),
                    int(c.received_unix_nano)
                ])?;
            }
            let mut conflict = tx.prepare_cached(
                "INSERT INTO conflicts (chain, seq, event, hash, stored_hash, received) \
                 SELECT id, ?2, ?3, ?4, ?5, ?6 FROM chains WHERE chain_id = ?1",
            )?;
            for c in &commit.conflicts {
                conflict.execute(params![
                    c.chain_id,
                    int(c.seq),
                    c.event,
                    c.hash,
                    c.stored_hash,
                    int(c.received_unix_nano)
                ])?;
            }
            let mut grant = tx.prepare_cached(
                "INSERT INTO grants (id, created, ends, body) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET ends = excluded.ends, body = excluded.body",
            )?;
            for g in &commit.grants {
                grant.execute(params![
                    g.id,
                    int(g.created_unix_nano),
                    int(proto::grant::end(g)),
                    g.encode_to_vec()
                ])?;
            }
        }
        tx.commit()?;
        Ok(conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }

    fn last_row(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))
        })
    }

    fn after_row(
        &self,
        filter: &EventFilter,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<(i64, StoredEvent)>, StoreError> {
        let mut sql = format!("{STORED_COLUMNS} e.id > ? AND e.id <= ?");
        let mut args = vec![Value::Integer(after), Value::Integer(up_to)];
        filter_sql(filter, &mut sql, &mut args);
        sql.push_str(" ORDER BY e.id LIMIT ?");
        args.push(Value::Integer(int(limit as u64)));
        let rows = self.read(|conn| query_stored(conn, &sql, &args))?;
        Ok(rows.into_iter().map(|(c, e)| (c.row, e)).collect())
    }

    fn search(
        &self,
        filter: &EventFilter,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<(Cursor, StoredEvent)>, StoreError> {
        let mut sql = format!("{STORED_COLUMNS} (e.time > ? OR (e.time = ? AND e.id > ?))");
        let time = Value::Integer(int(after.time_unix_nano));
        let mut args = vec![time.clone(), time, Value::Integer(after.row)];
        filter_sql(filter, &mut sql, &mut args);
        sql.push_str(" ORDER BY e.time, e.id LIMIT ?");
        args.push(Value::Integer(int(limit as u64)));
        self.read(|conn| query_stored(conn, &sql, &args))
    }

    fn sessions(&self, host: &str, since_unix_nano: u64) -> Result<Vec<Session>, StoreError> {
        self.read(|conn| {
            // The session's root and identity come from its first event.
            let mut stmt = conn.prepare_cached(
                "SELECT e.session, e.host, MIN(e.sessionid), MIN(e.time), MAX(e.time), COUNT(*), \
                 SUM(e.kind = 'exec'), SUM(e.tty_bytes), \
                 (SELECT f.event FROM events f WHERE f.session = e.session \
                  ORDER BY f.time, f.id LIMIT 1) \
                 FROM events e WHERE e.session != '' AND e.time >= ?1 AND (?2 = '' OR e.host = ?2) \
                 GROUP BY e.session ORDER BY MIN(e.time)",
            )?;
            stmt.query_map(params![int(since_unix_nano), host], |r| {
                let key: String = r.get(0)?;
                let first = Event::decode(r.get_ref(8)?.as_blob()?).unwrap_or_default();
                Ok(Session {
                    root_start_unix_nano: key
                        .rsplit(':')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_default(),
                    key,
                    host: r.get(1)?,
                    sessionid: r.get::<_, Option<u32>>(2)?.unwrap_or_default(),
                    root_pid: first.session_root.map_or(0, |s| s.pid),
                    identity: Some(first.identity.unwrap_or_else(Identity::default)),
                    first_unix_nano: uint(r.get(3)?),
                    last_unix_nano: uint(r.get(4)?),
                    events: uint(r.get(5)?),
                    execs: uint(r.get(6)?),
                    tty_bytes: uint(r.get(7)?),
                })
            })?
            .collect()
        })
    }

    fn verify(&self, host: &str, chain_id: &str) -> Result<Vec<ChainVerdict>, StoreError> {
        self.read(|conn| {
            let chains: Vec<ChainRow> = conn
                .prepare_cached(
                    "SELECT id, chain_id, host, next_seq, head_hash FROM chains \
                     WHERE (?1 = '' OR host = ?1) AND (?2 = '' OR chain_id = ?2) ORDER BY id",
                )?
                .query_map(params![host, chain_id], |r| {
                    Ok(ChainRow {
                        id: r.get(0)?,
                        chain_id: r.get(1)?,
                        host: r.get(2)?,
                        next_seq: uint(r.get(3)?),
                        head_hash: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            chains.iter().map(|c| verify_chain(conn, c)).collect()
        })
    }

    fn grants(&self, ended_after: u64) -> Result<Vec<Grant>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT body FROM grants WHERE ends > ?1 ORDER BY created, id")?
                .query_map([int(ended_after)], |r| decode_grant(r, 0))?
                .collect()
        })
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT body FROM grants WHERE id = ?1")?
                .query_row([id], |r| decode_grant(r, 0))
                .optional()
        })
    }

    fn grant_usage(&self, id: &str) -> Result<GrantUsage, StoreError> {
        self.read(|conn| {
            // The second term lets SQLite use the partial index `events_grant`.
            conn.prepare_cached(
                "SELECT COUNT(*), COALESCE(MIN(time), 0), COALESCE(MAX(time), 0) FROM events \
                 WHERE grant_id = ?1 AND grant_id != ''",
            )?
            .query_row([id], |r| {
                Ok(GrantUsage {
                    events: uint(r.get(0)?),
                    first_unix_nano: uint(r.get(1)?),
                    last_unix_nano: uint(r.get(2)?),
                })
            })
        })
    }

    fn violations(
        &self,
        since_unix_nano: u64,
        newest: usize,
    ) -> Result<Vec<Violations>, StoreError> {
        self.read(|conn| {
            let mut per_identity: Vec<Violations> = conn
                .prepare_cached(
                    "SELECT identity_kind, identity_name, COUNT(*) FROM events \
                     WHERE kind = 'violation' AND time >= ?1 \
                     GROUP BY identity_kind, identity_name ORDER BY identity_kind, identity_name",
                )?
                .query_map([int(since_unix_nano)], |r| {
                    Ok(Violations {
                        identity_kind: r.get(0)?,
                        identity_name: r.get(1)?,
                        count: uint(r.get(2)?),
                        newest: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let sql = format!(
                "{STORED_COLUMNS} e.kind = 'violation' AND e.identity_kind = ?1 \
                 AND e.identity_name = ?2 AND e.time >= ?3 ORDER BY e.time DESC, e.id DESC LIMIT ?4"
            );
            for v in &mut per_identity {
                let args = [
                    Value::Integer(i64::from(v.identity_kind)),
                    Value::Text(v.identity_name.clone()),
                    Value::Integer(int(since_unix_nano)),
                    Value::Integer(int(newest as u64)),
                ];
                v.newest = query_stored(conn, &sql, &args)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect();
            }
            Ok(per_identity)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Append, Record};

    /// A record of chain `c` continuing from `prev`.
    fn record(seq: u64, prev: &[u8; 32], kind: &'static str, event: &Event, grant: &str) -> Record {
        let bytes = event.encode_to_vec();
        Record {
            seq,
            host: "h".into(),
            time_unix_nano: event.time_unix_nano,
            kind,
            session: String::new(),
            sessionid: None,
            identity_kind: 1,
            identity_name: "alice".into(),
            grant: grant.into(),
            tty_bytes: 0,
            hash: chain_hash("c", seq, prev, &bytes),
            event: bytes,
        }
    }

    /// A store made before grants (no `events.grant_id`, no `grants` table) opens, keeps
    /// verifying, and records grant use from then on.
    #[test]
    fn a_store_from_before_grants_opens_and_records_grant_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let path = path.to_str().unwrap();
        let start = Event {
            time_unix_nano: 10,
            ..Event::default()
        };
        let first = record(0, &GENESIS, "chain_start", &start, "");
        {
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
            old.execute(
                "INSERT INTO chains VALUES (1, 'c', 'h', 1, ?1)",
                [&first.hash[..]],
            )
            .unwrap();
            old.execute(
                "INSERT INTO events VALUES (1, 1, 0, 'h', 10, 'chain_start', '', NULL, 1, \
                 'alice', 0, ?1, ?2)",
                params![first.event, &first.hash[..]],
            )
            .unwrap();
        }

        let store = Sqlite::open(path).unwrap();
        assert_eq!(store.chains().unwrap()[0].next_seq, 1);
        let used = Event {
            time_unix_nano: 20,
            ..Event::default()
        };
        let second = record(1, &first.hash, "exec", &used, "g-1");
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
        let verdicts = store.verify("", "").unwrap();
        assert!(verdicts[0].ok && verdicts[0].records == 2, "{verdicts:?}");
        drop(store);
        // And it opens again, as a store made now does.
        assert_eq!(
            Sqlite::open(path)
                .unwrap()
                .grant_usage("g-1")
                .unwrap()
                .events,
            1
        );
    }
}
