//! The PostgreSQL schema and its versions, counted in the one row of `schema_version`.
//! Opening brings the database to `VERSION` in one transaction, under an advisory lock, so
//! two collectors starting on one database never migrate it twice, and a database is never
//! half migrated:
//!
//! - 1: what version 5 of the SQLite schema holds (chains, events with their columns and
//!   log indexes, grants, tokens, revoked hosts, hosts' logs, cosigned checkpoints and
//!   forks, prunes and holds).
//! - 2: each host's latest contact with any collector on the database (`liveness`).
//! - 3: the count of decisions the collectors made (`Commit::decisions`), in `changes` as
//!   SQLite keeps it.
//! - 4: events no longer reference their chain through an enforced foreign key.

use postgres::Client;

/// The schema this collector reads and writes.
const VERSION: i64 = 4;

/// Taken by every collector migrating a database (an arbitrary constant, "recorder").
const MIGRATION_LOCK: i64 = 0x7265_636f_7264_6572;

/// Version 1. Integers are `BIGINT` throughout: the store's values are unsigned 64-bit,
/// bounded at ingest to what a signed one holds.
const V1: &str = "
CREATE TABLE chains (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain_id TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL,
    next_seq BIGINT NOT NULL,
    head_hash BYTEA NOT NULL
);
CREATE INDEX chains_host ON chains(host, id);
CREATE TABLE events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain BIGINT NOT NULL REFERENCES chains(id),
    seq BIGINT NOT NULL,
    host TEXT NOT NULL,
    time BIGINT NOT NULL,
    kind TEXT NOT NULL,
    session TEXT NOT NULL,
    sessionid BIGINT,
    identity_kind BIGINT NOT NULL,
    identity_name TEXT NOT NULL,
    tty_bytes BIGINT NOT NULL,
    event BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    grant_id TEXT NOT NULL DEFAULT '',
    tty TEXT NOT NULL DEFAULT '',
    log_index BIGINT
);
CREATE UNIQUE INDEX events_chain_seq ON events(chain, seq);
CREATE UNIQUE INDEX events_log ON events(host, log_index) WHERE log_index IS NOT NULL;
CREATE INDEX events_time ON events(time);
CREATE INDEX events_session ON events(session, time) WHERE session != '';
CREATE INDEX events_grant ON events(grant_id, time) WHERE grant_id != '';
CREATE INDEX events_violations ON events(identity_kind, identity_name, time)
    WHERE kind = 'violation';
CREATE TABLE checkpoints (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain BIGINT NOT NULL REFERENCES chains(id),
    size BIGINT NOT NULL,
    head_hash BYTEA NOT NULL,
    time BIGINT NOT NULL,
    received BIGINT NOT NULL
);
CREATE INDEX checkpoints_chain ON checkpoints(chain, id);
CREATE TABLE conflicts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain BIGINT NOT NULL REFERENCES chains(id),
    seq BIGINT NOT NULL,
    event BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    stored_hash BYTEA NOT NULL,
    received BIGINT NOT NULL
);
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    created BIGINT NOT NULL,
    ends BIGINT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX grants_ends ON grants(ends);
CREATE TABLE tokens (
    hash BYTEA PRIMARY KEY,
    host TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    creator TEXT NOT NULL,
    used BIGINT NOT NULL
);
CREATE TABLE revoked_hosts (
    host TEXT PRIMARY KEY,
    time BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE logs (
    host TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    frontier BYTEA NOT NULL,
    cosigned_size BIGINT NOT NULL,
    cosigned_root BYTEA NOT NULL,
    cosigned_note TEXT NOT NULL
);
CREATE TABLE certs (
    hash BYTEA PRIMARY KEY,
    pem TEXT NOT NULL
);
CREATE TABLE log_checkpoints (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host TEXT NOT NULL,
    size BIGINT NOT NULL,
    root BYTEA NOT NULL,
    note TEXT NOT NULL,
    cert BYTEA NOT NULL REFERENCES certs(hash),
    received BIGINT NOT NULL
);
CREATE INDEX log_checkpoints_host ON log_checkpoints(host, id);
CREATE TABLE checkpoint_forks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host TEXT NOT NULL,
    size BIGINT NOT NULL,
    note TEXT NOT NULL,
    received BIGINT NOT NULL
);
CREATE TABLE prunes (
    host TEXT PRIMARY KEY,
    end_index BIGINT NOT NULL,
    frontier BYTEA NOT NULL
);
CREATE TABLE holds (
    session TEXT PRIMARY KEY,
    time BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
";

/// Version 2. `silent` is 1 once a collector raised `host_silent` after `seen`.
const V2: &str = "
CREATE TABLE contacts (
    host TEXT PRIMARY KEY,
    seen BIGINT NOT NULL,
    silent INTEGER NOT NULL
);
";

/// Version 3.
const V3: &str = "
CREATE TABLE changes (
    kind TEXT PRIMARY KEY,
    count BIGINT NOT NULL
);
";

/// Version 4. PostgreSQL checked the key with a query and a row lock on the chain for every
/// event stored, a third of the server's time in a batch's `COPY` (docs/scaling.md). The
/// writer stores a chain's row before its events in one transaction and never deletes a
/// chain, and verify finds a chain that is gone without the key, from the hosts' logs and
/// the collectors' chains; SQLite never enforced it.
const V4: &str = "ALTER TABLE events DROP CONSTRAINT IF EXISTS events_chain_fkey;";

#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
    #[error("its schema version {0} is newer than this collector's ({VERSION})")]
    Newer(i64),
}

/// Brings the database to `VERSION`, or refuses one made by a newer collector.
pub(super) fn migrate(client: &mut Client) -> Result<(), MigrateError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let version: i64 = tx
        .query_opt("SELECT version FROM schema_version", &[])?
        .map_or(0, |r| r.get(0));
    if version > VERSION {
        return Err(MigrateError::Newer(version));
    }
    if version < 1 {
        tx.batch_execute(V1)?;
        tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
    }
    if version < 2 {
        tx.batch_execute(V2)?;
    }
    if version < 3 {
        tx.batch_execute(V3)?;
    }
    if version < 4 {
        tx.batch_execute(V4)?;
    }
    tx.execute("UPDATE schema_version SET version = $1", &[&VERSION])?;
    Ok(tx.commit()?)
}
