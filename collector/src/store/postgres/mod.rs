//! The PostgreSQL backend (docs/scaling.md). A commit is one transaction, acknowledged only
//! once PostgreSQL has committed it (with its own `synchronous_commit`, on by default). One
//! connection writes; readers take pooled connections and read one snapshot per call.
//! Appends to a chain compare and set its head: an append starts at the stored head or past
//! it (past it after a declared spool hole), so two writers can never fork a stored chain:
//! the second one's commit fails, and nothing of it is kept.

mod bind;
mod schema;
mod sessions;

use std::{
    ops::ControlFlow,
    str::FromStr as _,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use self::bind::params;
use postgres::config::SslMode;
use postgres::{
    Client, IsolationLevel, NoTls, Row, Transaction, binary_copy::BinaryCopyInWriter,
    error::SqlState, fallible_iterator::FallibleIterator as _, types::ToSql, types::Type,
};
use prost::Message as _;
use proto::{chain::GENESIS, v1::Grant};
use sha2::Digest as _;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Bound, ChainRow, ChainState, Changed, Columns, Commit, Cursor, EventFilter, GrantUsage,
    HostContact, LeafRow, LogCheckpoint, LogRow, Moved, Page, PruneRow, Reach, RevokedHost,
    SessionLeaf, SessionQuery, SessionRow, Store, StoreError, TokenRow, Violations,
    sql::{
        CHAIN_COLUMNS, CONTACTS, Conditions, DECISIONS, DECISIONS_MOVE, Dialect, FIRST_SILENT,
        LOG_COLUMNS, NEXT_SILENT, STORED_COLUMNS, StoredRow, by_row, chain_starts, hash32, int,
        log_upsert, page, taken, uint,
    },
};

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if e.code() == Some(&SqlState::DISK_FULL) {
            Self::Full(Arc::new(e))
        } else {
            Self::Backend(Arc::new(e))
        }
    }
}

pub struct Postgres {
    config: postgres::Config,
    tls: Option<MakeRustlsConnect>,
    writer: Mutex<Option<Client>>,
    /// The server process of the writer's connection: the notifications it sends are this
    /// collector's own, which it has no need to hear.
    writer_pid: Arc<AtomicI32>,
    readers: Mutex<Readers>,
    /// Signalled when a reader's connection is given back or closed.
    freed: Condvar,
}

/// Connections readers may have open at once, whatever the number of concurrent reads (up
/// to tokio's 512 blocking threads): the server's `max_connections` is 100 by default, and
/// other collectors and tools share it. A read past it waits for a connection.
const READERS_MAX: usize = 32;

#[derive(Default)]
struct Readers {
    idle: Vec<Client>,
    /// Open, idle or in use.
    open: usize,
}

/// Runs a call of the synchronous driver, which drives its connection on a runtime of its
/// own: on a worker of the collector's runtime it must first leave it.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A connection, over TLS when `tls` is given.
fn connect(
    config: &postgres::Config,
    tls: Option<&MakeRustlsConnect>,
) -> Result<Client, postgres::Error> {
    match tls {
        Some(tls) => config.connect(tls.clone()),
        None => config.connect(NoTls),
    }
}

/// `Store::record_contacts`: every host heard in one statement, the hosts and their times
/// as two arrays. In host order: two collectors noting the same hosts at once lock their
/// rows in the same order, so neither can wait on the other in a cycle (a deadlock, which
/// PostgreSQL would end by failing one of them).
const CONTACTS_UPSERT: &str = "INSERT INTO contacts (host, seen, silent) \
     SELECT host, seen, 0 FROM UNNEST($1::text[], $2::bigint[]) AS heard (host, seen) \
     ORDER BY host \
     ON CONFLICT (host) DO UPDATE SET seen = excluded.seen, silent = 0 \
     WHERE excluded.seen > contacts.seen";

/// The channel collectors on one database tell each other of their changes on.
const CHANNEL: &str = "recorder_changes";
/// How long the listener waits before dialling again after losing its connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

fn backend_pid(client: &mut Client) -> Result<i32, postgres::Error> {
    Ok(client.query_one("SELECT pg_backend_pid()", &[])?.get(0))
}

/// A connection that hears what the other collectors commit.
fn listener(
    config: &postgres::Config,
    tls: Option<&MakeRustlsConnect>,
) -> Result<Client, postgres::Error> {
    let mut client = connect(config, tls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

/// Hears the other collectors' changes for as long as the collector runs, dialling again
/// whenever the connection is lost.
fn follow(
    mut client: Client,
    config: &postgres::Config,
    tls: Option<&MakeRustlsConnect>,
    own: &AtomicI32,
    each: &dyn Fn(Changed),
) {
    loop {
        let heard = client.notifications().blocking_iter().next();
        let Ok(Some(note)) = heard else {
            let error = heard.err().map(|e| e.to_string()).unwrap_or_default();
            tracing::warn!(%error, "lost the database connection that hears the other collectors' changes; dialling again");
            client = loop {
                std::thread::sleep(LISTEN_RETRY);
                match listener(config, tls) {
                    Ok(client) => break client,
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for the other collectors' changes");
                    }
                }
            };
            for kind in Changed::ALL {
                each(kind);
            }
            continue;
        };
        if note.process_id() == own.load(Ordering::Relaxed) {
            continue;
        }
        if let Some(kind) = Changed::ALL
            .into_iter()
            .find(|k| k.name() == note.payload())
        {
            each(kind);
        }
    }
}

/// Settings for TLS to the database that contradict each other.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TlsSetting(&'static str);

/// The stored columns of an events row, read from column `at` on in the order
/// `host, time, kind, session, sessionid, tty, identity_kind, identity_name, grant_id,
/// tty_bytes`.
fn columns(r: &Row, at: usize) -> Result<Columns<'_>, postgres::Error> {
    Ok(Columns {
        host: r.try_get(at)?,
        time_unix_nano: uint(r.try_get(at + 1)?),
        kind: r.try_get(at + 2)?,
        session: r.try_get(at + 3)?,
        sessionid: r
            .try_get::<_, Option<i64>>(at + 4)?
            .and_then(|id| u32::try_from(id).ok()),
        tty: r.try_get(at + 5)?,
        identity_kind: i32::try_from(r.try_get::<_, i64>(at + 6)?).unwrap_or(i32::MIN),
        identity_name: r.try_get(at + 7)?,
        grant: r.try_get(at + 8)?,
        tty_bytes: uint(r.try_get(at + 9)?),
    })
}

fn stored_event(r: &Row) -> Result<(Cursor, proto::v1::StoredEvent), postgres::Error> {
    let cursor = Cursor {
        row: r.try_get(0)?,
        time_unix_nano: uint(r.try_get(1)?),
    };
    let stored = StoredRow {
        host: r.try_get(2)?,
        chain_id: r.try_get(3)?,
        seq: uint(r.try_get(4)?),
        session: r.try_get(5)?,
        event: r.try_get(6)?,
        hash: r.try_get(7)?,
        kind: r.try_get(8)?,
    };
    Ok((cursor, stored.into_stored()))
}

/// A row a page's sizes named that its read did not return, in the same snapshot: never
/// expected.
#[derive(Debug, thiserror::Error)]
#[error("row {0} of a page was not read back")]
struct RowMissing(i64);

fn decode_grant(r: &Row) -> Result<Grant, StoreError> {
    Grant::decode(r.try_get::<_, &[u8]>(0)?).map_err(|e| StoreError::Backend(Arc::new(e)))
}

fn chain_state(r: &Row) -> Result<ChainState, postgres::Error> {
    let head: Vec<u8> = r.try_get(3)?;
    Ok(ChainState {
        chain_id: r.try_get(0)?,
        host: r.try_get(1)?,
        next_seq: uint(r.try_get(2)?),
        head_hash: head.try_into().unwrap_or(GENESIS),
    })
}

fn log_row(r: &Row) -> Result<LogRow, postgres::Error> {
    Ok(LogRow {
        host: r.try_get(0)?,
        size: uint(r.try_get(1)?),
        frontier: r.try_get(2)?,
        cosigned_size: uint(r.try_get(3)?),
        cosigned_root: hash32(r.try_get(4)?),
        cosigned_note: r.try_get(5)?,
    })
}

fn collect<T>(
    rows: &[Row],
    each: impl Fn(&Row) -> Result<T, postgres::Error>,
) -> Result<Vec<T>, StoreError> {
    Ok(rows.iter().map(each).collect::<Result<_, _>>()?)
}

/// A server that may lose a commit it reported, which would make an ack a lie.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server has {setting} = {value}: a commit it reports could be lost, so the collector could acknowledge what it does not keep"
)]
struct NotDurable {
    setting: &'static str,
    value: String,
}

/// Checks that a commit the server reports is on its disk: `fsync` on and
/// `synchronous_commit` not off (any other value flushes the server's own WAL first).
fn durable(client: &mut Client) -> Result<(), Arc<dyn std::error::Error + Send + Sync>> {
    for setting in ["fsync", "synchronous_commit"] {
        let value: String = client
            .query_one(&format!("SHOW {setting}"), &[])
            .map_err(|e| Arc::new(e) as Arc<_>)?
            .get(0);
        if value == "off" {
            return Err(Arc::new(NotDurable { setting, value }));
        }
    }
    Ok(())
}

impl Postgres {
    /// Connects to the database `url` names (a `postgres://` URL, as libpq takes it),
    /// creating the schema or bringing an older one to this collector's. With `tls` every
    /// connection is TLS, and the server's certificate must chain to its roots and name the
    /// URL's host (libpq's `sslmode=verify-full`); a URL saying `sslmode=disable` then
    /// contradicts it. Without, a URL asking for TLS is refused rather than served in
    /// plaintext, since nothing could check the server.
    pub fn open(url: &str, tls: Option<pki::rustls::ClientConfig>) -> Result<Self, StoreError> {
        let failed = |source: Arc<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: settings::without_passwords(url),
            source,
        };
        let mut config = postgres::Config::from_str(url).map_err(|e| failed(Arc::new(e)))?;
        match (config.get_ssl_mode(), &tls) {
            (SslMode::Disable, Some(_)) => {
                return Err(failed(Arc::new(TlsSetting(
                    "the URL says sslmode=disable, but a CA to check the server with is given",
                ))));
            }
            (SslMode::Require, None) => {
                return Err(failed(Arc::new(TlsSetting(
                    "the URL says sslmode=require, but no CA to check the server with is given \
                     (--store-ca)",
                ))));
            }
            // A CA given means TLS or nothing: prefer would fall back to plaintext.
            (_, Some(_)) => {
                config.ssl_mode(SslMode::Require);
            }
            _ => {}
        }
        let tls = tls.map(MakeRustlsConnect::new);
        let writer_pid = Arc::new(AtomicI32::new(0));
        let writer = off_runtime(|| {
            let mut writer = connect(&config, tls.as_ref()).map_err(|e| failed(Arc::new(e)))?;
            durable(&mut writer).map_err(failed)?;
            schema::migrate(&mut writer).map_err(|e| failed(Arc::new(e)))?;
            writer_pid.store(
                backend_pid(&mut writer).map_err(|e| failed(Arc::new(e)))?,
                Ordering::Relaxed,
            );
            Ok::<_, StoreError>(writer)
        })?;
        Ok(Self {
            config,
            tls,
            writer: Mutex::new(Some(writer)),
            writer_pid,
            readers: Mutex::default(),
            freed: Condvar::new(),
        })
    }

    fn connect(&self) -> Result<Client, StoreError> {
        Ok(connect(&self.config, self.tls.as_ref())?)
    }

    /// Runs `f` on a pooled connection, in a read-only snapshot.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_reader(|client| {
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Runs `f` as `read` does, with sorting ruled out, for the pages of a walk (a chain's
    /// records by seq, a host's leaves by log index): each comes straight off the index that
    /// both bounds and orders it. With stale statistics (a store just filled, before
    /// autovacuum analyzed it) PostgreSQL took every row from the page's start on, sorted
    /// them and kept the first page, so a walk was quadratic in the chain's or log's length.
    /// (A chain is then named by its row id as one value, not through a join, so that the
    /// index's order is seq's.)
    fn read_in_index_order<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.read(|tx| {
            tx.batch_execute("SET LOCAL enable_sort = off")?;
            f(tx)
        })
    }

    /// `f` in a transaction of the writer's connection, committed if it returns `Ok`, off
    /// the async runtime.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if writer.as_ref().is_none_or(Client::is_closed) {
                let mut client = self.connect()?;
                self.writer_pid
                    .store(backend_pid(&mut client)?, Ordering::Relaxed);
                *writer = Some(client);
            }
            let client = writer.as_mut().expect("connected above");
            let mut tx = client.transaction()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// `f` on a reader's connection, outside any transaction, off the async runtime.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let mut client = self.reader()?;
            let out = f(&mut client);
            let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if client.is_closed() {
                readers.open -= 1;
            } else {
                readers.idle.push(client);
            }
            self.freed.notify_one();
            out
        })
    }

    /// An idle reader's connection, or a new one while fewer than `READERS_MAX` are open;
    /// else waits for one. A connection the server closed (it restarted, say) is replaced,
    /// not reused.
    fn reader(&self) -> Result<Client, StoreError> {
        let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(client) = readers.idle.pop() {
                if !client.is_closed() {
                    return Ok(client);
                }
                readers.open -= 1;
                continue;
            }
            if readers.open < READERS_MAX {
                break;
            }
            readers = self
                .freed
                .wait(readers)
                .unwrap_or_else(PoisonError::into_inner);
        }
        readers.open += 1;
        drop(readers);
        self.connect().inspect_err(|_| {
            self.readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open -= 1;
            self.freed.notify_one();
        })
    }

    /// The events `conditions` selects, in `order`, as much of them as `bound` lets one
    /// read hold (`sql::page`), in one snapshot.
    fn bounded(
        &self,
        conditions: Conditions,
        order: &str,
        bound: Bound,
    ) -> Result<Page<Cursor>, StoreError> {
        let sizes = conditions.sizes(order, bound);
        self.read(|tx| {
            let sizes: Vec<(i64, i64)> = tx
                .query(&sizes.sql, &params(&sizes.args))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            // The rows the page takes, in one statement and in the page's order, each read
            // as it arrives: a statement a row cost a round trip each, 10,000 a page.
            let ids: Vec<i64> = sizes[..taken(&sizes, bound)]
                .iter()
                .map(|(id, _)| *id)
                .collect();
            let mut rows = tx.query_raw(
                &format!("{STORED_COLUMNS} e.id = ANY($1) ORDER BY {order}"),
                [&ids],
            )?;
            page(&sizes, bound, |id| {
                let missing = || StoreError::Backend(Arc::new(RowMissing(id)));
                let row = rows.next()?.ok_or_else(missing)?;
                let (cursor, event) = stored_event(&row)?;
                if cursor.row == id {
                    Ok((cursor, event))
                } else {
                    Err(missing())
                }
            })
        })
    }
}

impl Drop for Postgres {
    /// Each connection owns the runtime that drives it, which cannot be dropped on a worker
    /// of the collector's.
    fn drop(&mut self) {
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let readers = std::mem::take(
            &mut self
                .readers
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .idle,
        );
        off_runtime(|| drop((writer, readers)));
    }
}

/// A running transaction's 32-bit id (as locks show it) as the 64-bit one it stands for: the
/// one nearest `near`, a snapshot's xmax. A running transaction is never 2^31 or more behind
/// it (PostgreSQL stops handing ids out first), and only a few ahead of it (ids handed out
/// since the newest transaction ended).
fn full_xid(near: u64, xid: u64) -> u64 {
    let ahead = i64::from((xid as u32).wrapping_sub(near as u32).cast_signed());
    near.saturating_add_signed(ahead)
}

/// The records of the commit, after their chains' heads are set.
fn commit_events(tx: &mut Transaction<'_>, commit: &Commit) -> Result<(), StoreError> {
    let chain = tx.prepare(
        "INSERT INTO chains (chain_id, host, next_seq, head_hash) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (chain_id) DO UPDATE SET next_seq = excluded.next_seq, \
         head_hash = excluded.head_hash WHERE chains.next_seq <= $5 RETURNING id",
    )?;
    // The chain rows move before the COPY takes row ids: that gives the transaction its own
    // id first, which `reach` relies on to tell when every row below an id is settled.
    //
    // Every record of the commit in one binary COPY: no statement to parse, no row to plan.
    let mut ids = Vec::with_capacity(commit.appends.len());
    for append in &commit.appends {
        let (Some(first), Some(last)) = (append.records.first(), append.records.last()) else {
            continue;
        };
        let id: i64 = tx
            .query_opt(
                &chain,
                &[
                    &append.chain_id,
                    &append.chain_host,
                    &int(last.seq + 1),
                    &&last.hash[..],
                    &int(first.seq),
                ],
            )?
            .ok_or_else(|| Moved::chain(&append.chain_id, first.seq))?
            .get(0);
        ids.push((id, append));
    }
    if ids.is_empty() {
        return Ok(());
    }
    let copy = tx.copy_in(
        "COPY events (chain, seq, host, time, kind, session, sessionid, identity_kind, \
         identity_name, tty_bytes, event, hash, grant_id, tty, log_index) FROM STDIN BINARY",
    )?;
    let (int8, text, bytea) = (Type::INT8, Type::TEXT, Type::BYTEA);
    let mut rows = BinaryCopyInWriter::new(
        copy,
        &[
            int8.clone(),
            int8.clone(),
            text.clone(),
            int8.clone(),
            text.clone(),
            text.clone(),
            int8.clone(),
            int8.clone(),
            text.clone(),
            int8.clone(),
            bytea.clone(),
            bytea,
            text.clone(),
            text,
            int8,
        ],
    );
    for (id, append) in ids {
        for r in &append.records {
            let d = &r.derived;
            rows.write(&[
                &id,
                &int(r.seq),
                &d.host,
                &int(d.time_unix_nano),
                &d.kind.name(),
                &d.session,
                &d.sessionid.map(i64::from),
                &i64::from(d.identity_kind),
                &d.identity_name,
                &int(d.tty_bytes),
                &&r.event[..],
                &&r.hash[..],
                &d.grant,
                &d.tty,
                &r.log_index.map(int),
            ])?;
        }
    }
    rows.finish()?;
    Ok(())
}

/// The conflicts, grants, join tokens and revoked hosts of a commit, and its move of the
/// store's count of decisions.
fn commit_trust(tx: &mut Transaction<'_>, commit: &Commit) -> Result<(), StoreError> {
    if let Some(d) = commit.decisions {
        tx.query_opt(DECISIONS_MOVE, &[&int(d.after), &int(d.made)])?
            .ok_or_else(|| Moved::decisions(d.made))?;
    }
    for c in &commit.conflicts {
        tx.execute(
            "INSERT INTO conflicts (chain, seq, event, hash, stored_hash, received) \
             SELECT id, $2, $3, $4, $5, $6 FROM chains WHERE chain_id = $1",
            &[
                &c.chain_id,
                &int(c.seq),
                &&c.event[..],
                &c.hash,
                &c.stored_hash,
                &int(c.received_unix_nano),
            ],
        )?;
    }
    for g in &commit.grants {
        tx.execute(
            "INSERT INTO grants (id, created, ends, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET ends = excluded.ends, body = excluded.body",
            &[
                &g.id,
                &int(g.created_unix_nano),
                &int(proto::grant::end(g)),
                &g.encode_to_vec(),
            ],
        )?;
    }
    for t in &commit.tokens {
        tx.execute(
            "INSERT INTO tokens (hash, host, created, expires, creator, used) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO UPDATE SET used = excluded.used",
            &[
                &&t.hash[..],
                &t.host,
                &int(t.created_unix_nano),
                &int(t.expires_unix_nano),
                &t.creator,
                &int(t.used_unix_nano),
            ],
        )?;
    }
    for r in &commit.revoked_hosts {
        tx.execute(
            "INSERT INTO revoked_hosts (host, time, actor, reason) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (host) DO NOTHING",
            &[&r.host, &int(r.time_unix_nano), &r.actor, &r.reason],
        )?;
    }
    Ok(())
}

/// The hosts' logs, cosigned checkpoints, prunes, holds and forks of a commit.
fn commit_logs(tx: &mut Transaction<'_>, commit: &Commit) -> Result<(), StoreError> {
    for l in &commit.logs {
        let set = tx.execute(
            &log_upsert(Dialect::Postgres),
            &[
                &l.host,
                &int(l.size),
                &l.frontier,
                &int(l.cosigned_size),
                &&l.cosigned_root[..],
                &l.cosigned_note,
            ],
        )?;
        if set == 0 {
            return Err(Moved::log(&l.host, l.size));
        }
    }
    for c in &commit.log_checkpoints {
        let hash = sha2::Sha256::digest(c.cert_pem.as_bytes()).to_vec();
        tx.execute(
            "INSERT INTO certs (hash, pem) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&hash, &c.cert_pem],
        )?;
        tx.execute(
            "INSERT INTO log_checkpoints (host, size, root, note, cert, received) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &c.host,
                &int(c.size),
                &&c.root[..],
                &c.note,
                &hash,
                &int(c.received_unix_nano),
            ],
        )?;
    }
    for p in &commit.prunes {
        tx.execute(
            "DELETE FROM events WHERE host = $1 AND log_index IS NOT NULL AND log_index < $2",
            &[&p.host, &int(p.end)],
        )?;
        tx.execute(
            "INSERT INTO prunes (host, end_index, frontier) VALUES ($1, $2, $3) \
             ON CONFLICT (host) DO UPDATE SET end_index = excluded.end_index, \
             frontier = excluded.frontier",
            &[&p.host, &int(p.end), &p.frontier],
        )?;
    }
    for h in &commit.holds {
        tx.execute(
            "INSERT INTO holds (session, time, actor, reason) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[&h.session, &int(h.time_unix_nano), &h.actor, &h.reason],
        )?;
    }
    for f in &commit.forks {
        tx.execute(
            "INSERT INTO checkpoint_forks (host, size, note, received) VALUES ($1, $2, $3, $4)",
            &[&f.host, &int(f.size), &f.note, &int(f.received_unix_nano)],
        )?;
    }
    Ok(())
}

impl Store for Postgres {
    fn chains(&self) -> Result<Vec<ChainState>, StoreError> {
        self.read(|tx| {
            collect(
                &tx.query(&format!("{CHAIN_COLUMNS} ORDER BY id"), &[])?,
                chain_state,
            )
        })
    }

    fn host_chains(&self, host: &str) -> Result<Vec<ChainState>, StoreError> {
        self.read(|tx| {
            let rows = tx.query(
                &format!("{CHAIN_COLUMNS} WHERE host = $1 ORDER BY id"),
                &[&host],
            )?;
            collect(&rows, chain_state)
        })
    }

    fn chain_starts(&self, host: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|tx| {
            let rows = tx.query(&chain_starts(Dialect::Postgres), &[&host])?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn hash_at(&self, chain_id: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT e.hash FROM events e JOIN chains c ON c.id = e.chain \
                     WHERE c.chain_id = $1 AND e.seq = $2",
                    &[&chain_id, &int(seq)],
                )?
                .map(|r| r.get(0)))
        })
    }

    fn decisions(&self) -> Result<u64, StoreError> {
        self.with_reader(|client| Ok(uint(client.query_one(DECISIONS, &[])?.get(0))))
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        self.write(|tx| {
            commit_events(tx, commit)?;
            commit_trust(tx, commit)?;
            commit_logs(tx, commit)?;
            // Delivered to the other collectors' listeners if, and when, the commit is.
            for (kind, changed) in [
                (Changed::Grants, !commit.grants.is_empty()),
                (Changed::RevokedHosts, !commit.revoked_hosts.is_empty()),
            ] {
                if changed {
                    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &kind.name()])?;
                }
            }
            Ok(())
        })
    }

    fn reach(&self) -> Result<Reach, StoreError> {
        // The ids first, then the transactions, in a statement of its own. A transaction
        // has its own id, and holds the lock on it, before it takes a row id (see
        // `commit_events`); so every row id read first was taken by a transaction that has
        // since ended, or that holds that lock when the second statement reads the locks.
        // A snapshot's xmax is one past the newest transaction *ended*, not the first id not
        // yet handed out: a running transaction may have an id at or past it (the newest
        // writer, with rows taken and not committed), so `settled_by` is also past every
        // id of a running one.
        self.with_reader(|client| {
            let row: i64 = client
                .query_one(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_id_seq",
                    &[],
                )?
                .get(0);
            let now = client.query_one(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
                 ARRAY(SELECT l.transactionid::text::bigint FROM pg_locks l \
                 JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' \
                 AND l.granted AND a.datname = current_database())",
                &[],
            )?;
            let xmax = uint(now.get(0));
            let running: Vec<u64> = now
                .get::<_, Vec<i64>>(1)
                .into_iter()
                .map(|xid| full_xid(xmax, uint(xid)))
                .collect();
            let settled_by = running.iter().map(|&xid| xid + 1).fold(xmax, u64::max);
            Ok(Reach {
                row,
                settled_by,
                oldest_running: running.into_iter().min().unwrap_or(settled_by),
            })
        })
    }

    fn after_row(
        &self,
        filter: &EventFilter,
        after: i64,
        up_to: i64,
        bound: Bound,
    ) -> Result<Page<i64>, StoreError> {
        let conditions = Conditions::after_row(Dialect::Postgres, filter, after, up_to);
        Ok(by_row(self.bounded(conditions, "e.id", bound)?))
    }

    fn search(
        &self,
        filter: &EventFilter,
        after: Cursor,
        bound: Bound,
    ) -> Result<Page<Cursor>, StoreError> {
        let conditions = Conditions::search(Dialect::Postgres, filter, after);
        self.bounded(conditions, "e.time, e.id", bound)
    }

    fn sessions(
        &self,
        query: &SessionQuery,
        each: &mut dyn FnMut(SessionRow) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.read(|tx| sessions::sessions(tx, query, each))
    }

    fn chain_rows(
        &self,
        chain_id: &str,
        from_seq: u64,
        limit: usize,
        each: &mut dyn FnMut(ChainRow<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.read_in_index_order(|tx| {
            let mut rows = tx.query_raw(
                "SELECT e.id, e.seq, e.event, e.hash, e.host, e.time, e.kind, e.session, \
                 e.sessionid, e.tty, e.identity_kind, e.identity_name, e.grant_id, e.tty_bytes \
                 FROM events e WHERE e.chain = (SELECT id FROM chains WHERE chain_id = $1) \
                 AND e.seq >= $2 ORDER BY e.seq LIMIT $3",
                [
                    &chain_id as &(dyn ToSql + Sync),
                    &int(from_seq),
                    &int(limit as u64),
                ],
            )?;
            // Row by row as they arrive: a page of records of up to 1 MiB each is never
            // held whole.
            while let Some(r) = rows.next()? {
                let r = &r;
                let row = ChainRow {
                    row: r.try_get(0)?,
                    seq: uint(r.try_get(1)?),
                    event: r.try_get(2)?,
                    hash: r.try_get(3)?,
                    columns: columns(r, 4)?,
                };
                if each(row).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn last_checkpoint(&self, chain_id: &str) -> Result<Option<u64>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT k.size FROM checkpoints k JOIN chains c ON c.id = k.chain \
                     WHERE c.chain_id = $1 ORDER BY k.id DESC LIMIT 1",
                    &[&chain_id],
                )?
                .map(|r| uint(r.get(0))))
        })
    }

    fn grants(&self, ended_after: u64) -> Result<Vec<Grant>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT body FROM grants WHERE ends > $1 ORDER BY created, id",
                &[&int(ended_after)],
            )?
            .iter()
            .map(decode_grant)
            .collect()
        })
    }

    fn grant(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        self.read(|tx| {
            tx.query_opt("SELECT body FROM grants WHERE id = $1", &[&id])?
                .as_ref()
                .map(decode_grant)
                .transpose()
        })
    }

    fn grant_usage(&self, id: &str) -> Result<GrantUsage, StoreError> {
        self.read(|tx| {
            // The second term lets PostgreSQL use the partial index `events_grant`.
            let r = tx.query_one(
                "SELECT COUNT(*), COALESCE(MIN(time), 0), COALESCE(MAX(time), 0) FROM events \
                 WHERE grant_id = $1 AND grant_id != ''",
                &[&id],
            )?;
            Ok(GrantUsage {
                events: uint(r.try_get(0)?),
                first_unix_nano: uint(r.try_get(1)?),
                last_unix_nano: uint(r.try_get(2)?),
            })
        })
    }

    fn violations(
        &self,
        since_unix_nano: u64,
        newest: usize,
    ) -> Result<Vec<Violations>, StoreError> {
        self.read(|tx| {
            let since = int(since_unix_nano);
            let mut per_identity = collect(
                &tx.query(
                    "SELECT identity_kind, identity_name, COUNT(*) FROM events \
                     WHERE kind = 'violation' AND time >= $1 \
                     GROUP BY identity_kind, identity_name ORDER BY identity_kind, identity_name",
                    &[&since],
                )?,
                |r| {
                    Ok(Violations {
                        identity_kind: i32::try_from(r.try_get::<_, i64>(0)?).unwrap_or(i32::MIN),
                        identity_name: r.try_get(1)?,
                        count: uint(r.try_get(2)?),
                        newest: Vec::new(),
                    })
                },
            )?;
            let newest_of = tx.prepare(&format!(
                "{STORED_COLUMNS} e.kind = 'violation' AND e.identity_kind = $1 \
                 AND e.identity_name = $2 AND e.time >= $3 ORDER BY e.time DESC, e.id DESC LIMIT $4"
            ))?;
            for v in &mut per_identity {
                let rows = tx.query(
                    &newest_of,
                    &[
                        &i64::from(v.identity_kind),
                        &v.identity_name,
                        &since,
                        &int(newest as u64),
                    ],
                )?;
                v.newest = collect(&rows, stored_event)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect();
            }
            Ok(per_identity)
        })
    }

    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
        self.read(|tx| {
            let Some(r) = tx.query_opt(
                "SELECT host, created, expires, creator, used FROM tokens WHERE hash = $1",
                &[&&hash[..]],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(TokenRow {
                hash: *hash,
                host: r.try_get(0)?,
                created_unix_nano: uint(r.try_get(1)?),
                expires_unix_nano: uint(r.try_get(2)?),
                creator: r.try_get(3)?,
                used_unix_nano: uint(r.try_get(4)?),
            }))
        })
    }

    fn record_contacts(&self, heard: &[(String, u64)]) -> Result<(), StoreError> {
        let (hosts, seen): (Vec<&str>, Vec<i64>) =
            heard.iter().map(|(h, s)| (h.as_str(), int(*s))).unzip();
        self.write(|tx| {
            tx.execute(CONTACTS_UPSERT, &[&hosts, &seen])?;
            Ok(())
        })
    }

    fn contacts(&self) -> Result<Vec<HostContact>, StoreError> {
        self.read(|tx| {
            collect(&tx.query(CONTACTS, &[])?, |r| {
                Ok(HostContact {
                    host: r.try_get(0)?,
                    seen_unix_nano: uint(r.try_get(1)?),
                    silent: r.try_get(2)?,
                })
            })
        })
    }

    fn mark_silent(&self, host: &str, seen: u64) -> Result<bool, StoreError> {
        let changed = self.write(|tx| {
            Ok(if seen == 0 {
                tx.execute(FIRST_SILENT, &[&host])?
            } else {
                tx.execute(NEXT_SILENT, &[&host, &int(seen)])?
            })
        })?;
        Ok(changed == 1)
    }

    fn revoked_hosts(&self) -> Result<Vec<RevokedHost>, StoreError> {
        self.read(|tx| {
            collect(
                &tx.query("SELECT host, time, actor, reason FROM revoked_hosts", &[])?,
                |r| {
                    Ok(RevokedHost {
                        host: r.try_get(0)?,
                        time_unix_nano: uint(r.try_get(1)?),
                        actor: r.try_get(2)?,
                        reason: r.try_get(3)?,
                    })
                },
            )
        })
    }

    fn logs(&self) -> Result<Vec<LogRow>, StoreError> {
        self.read(|tx| {
            collect(
                &tx.query(&format!("{LOG_COLUMNS} ORDER BY host"), &[])?,
                log_row,
            )
        })
    }

    fn log(&self, host: &str) -> Result<Option<LogRow>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_opt(&format!("{LOG_COLUMNS} WHERE host = $1"), &[&host])?
                .as_ref()
                .map(log_row)
                .transpose()?)
        })
    }

    fn log_leaves(
        &self,
        host: &str,
        from: u64,
        limit: usize,
        each: &mut dyn FnMut(LeafRow<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.read_in_index_order(|tx| {
            let mut rows = tx.query_raw(
                "SELECT e.log_index, e.id, c.chain_id, e.seq, e.event, e.hash, e.host, e.time, \
                 e.kind, e.session, e.sessionid, e.tty, e.identity_kind, e.identity_name, \
                 e.grant_id, e.tty_bytes FROM events e JOIN chains c ON c.id = e.chain \
                 WHERE e.host = $1 AND e.log_index >= $2 ORDER BY e.log_index LIMIT $3",
                [&host as &(dyn ToSql + Sync), &int(from), &int(limit as u64)],
            )?;
            while let Some(r) = rows.next()? {
                let r = &r;
                let leaf = LeafRow {
                    log_index: uint(r.try_get(0)?),
                    row: r.try_get(1)?,
                    chain_id: r.try_get(2)?,
                    seq: uint(r.try_get(3)?),
                    event: r.try_get(4)?,
                    hash: r.try_get(5)?,
                    columns: columns(r, 6)?,
                };
                if each(leaf).is_break() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn log_checkpoints(&self, host: &str) -> Result<Vec<LogCheckpoint>, StoreError> {
        self.read(|tx| {
            let rows = tx.query(
                "SELECT k.size, k.root, k.note, COALESCE(c.pem, ''), k.received \
                 FROM log_checkpoints k LEFT JOIN certs c ON c.hash = k.cert \
                 WHERE k.host = $1 ORDER BY k.id",
                &[&host],
            )?;
            collect(&rows, |r| {
                Ok(LogCheckpoint {
                    host: host.to_owned(),
                    size: uint(r.try_get(0)?),
                    root: hash32(r.try_get(1)?),
                    note: r.try_get(2)?,
                    cert_pem: r.try_get(3)?,
                    received_unix_nano: uint(r.try_get(4)?),
                })
            })
        })
    }

    fn prune(&self, host: &str) -> Result<Option<PruneRow>, StoreError> {
        self.read(|tx| {
            let Some(r) = tx.query_opt(
                "SELECT end_index, frontier FROM prunes WHERE host = $1",
                &[&host],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(PruneRow {
                host: host.to_owned(),
                end: uint(r.try_get(0)?),
                frontier: r.try_get(1)?,
            }))
        })
    }

    fn first_kept(
        &self,
        host: &str,
        from: u64,
        cutoff_unix_nano: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_opt(
                    "SELECT log_index FROM events WHERE host = $1 AND log_index >= $2 \
                     AND (time >= $3 OR session IN (SELECT session FROM holds)) \
                     ORDER BY log_index LIMIT 1",
                    &[&host, &int(from), &int(cutoff_unix_nano)],
                )?
                .map(|r| uint(r.get(0))))
        })
    }

    fn session_leaves(&self, key: &str) -> Result<Vec<SessionLeaf>, StoreError> {
        self.read(|tx| {
            let rows = tx.query(
                "SELECT c.chain_id, e.seq, e.log_index, e.event, e.hash FROM events e \
                 JOIN chains c ON c.id = e.chain \
                 WHERE e.session = $1 AND e.log_index IS NOT NULL ORDER BY e.log_index",
                &[&key],
            )?;
            collect(&rows, |r| {
                Ok(SessionLeaf {
                    chain_id: r.try_get(0)?,
                    seq: uint(r.try_get(1)?),
                    log_index: uint(r.try_get(2)?),
                    event: r.try_get(3)?,
                    hash: r.try_get(4)?,
                })
            })
        })
    }

    fn checkpointed_hosts(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            collect(
                &tx.query(
                    "SELECT DISTINCT host FROM log_checkpoints ORDER BY host",
                    &[],
                )?,
                |r| r.try_get(0),
            )
        })
    }

    fn follow_changes(&self, each: Box<dyn Fn(Changed) + Send>) -> Result<(), StoreError> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let own = Arc::clone(&self.writer_pid);
        let client = off_runtime(|| listener(&config, tls.as_ref()))?;
        std::thread::Builder::new()
            .name("store-changes".into())
            .spawn(move || follow(client, &config, tls.as_ref(), &own, &*each))
            .map_err(|e| StoreError::Backend(Arc::new(e)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::full_xid;

    /// Locks show a transaction's id in 32 bits; it is read as the nearest one to a
    /// snapshot's xmax, behind it or a little ahead, also across a wrap of the 32 bits.
    #[test]
    fn a_running_transactions_id_is_the_nearest_to_the_xmax() {
        let xmax = (5 << 32) | 0xa;
        assert_eq!(full_xid(xmax, 0xa), xmax);
        assert_eq!(full_xid(xmax, 0x4), (5 << 32) | 0x4);
        assert_eq!(full_xid(xmax, 0xc), (5 << 32) | 0xc);
        assert_eq!(full_xid(xmax, 0xffff_fff0), (4 << 32) | 0xffff_fff0);
        assert_eq!(full_xid((6 << 32) | 0xffff_fffe, 0x1), (7 << 32) | 0x1);
        assert_eq!(full_xid(700, 702), 702);
        assert_eq!(full_xid(700, 650), 650);
    }
}
