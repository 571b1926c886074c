//! The SQLite backend: WAL with `synchronous=FULL`, so a commit that returned survives a
//! power cut. One connection writes (the writer task's); readers take pooled connections and
//! see committed data only.

mod schema;
mod sessions;
mod sql;

use std::{
    ops::ControlFlow,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, Ordering},
        mpsc::{SyncSender, sync_channel},
    },
};

use prost::Message as _;
use proto::{chain::GENESIS, v1::Grant};
use rusqlite::{Connection, OptionalExtension as _, params, types::Value};

use self::sql::{bounded, decode_grant, query_stored};
use sha2::Digest as _;

use super::{
    Bound, ChainRow, ChainState, Changed, Columns, Commit, Cursor, EventFilter, GrantUsage,
    HostContact, LeafRow, LogCheckpoint, LogRow, Moved, Page, PruneRow, Reach, RevokedHost,
    SessionLeaf, SessionQuery, SessionRow, Store, StoreError, TokenRow, Violations,
    sql::{
        CHAIN_COLUMNS, CONTACT_UPSERT, CONTACTS, Conditions, DECISIONS, DECISIONS_MOVE, Dialect,
        FIRST_SILENT, LAST_ROW, LOG_COLUMNS, NEXT_SILENT, STORED_COLUMNS, by_row, chain_starts,
        hash32, int, log_upsert, uint,
    },
};

/// The stored columns of an events row, read from column `at` on in the order
/// `host, time, kind, session, sessionid, tty, identity_kind, identity_name, grant_id,
/// tty_bytes`.
fn columns<'r>(r: &'r rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Columns<'r>> {
    Ok(Columns {
        host: r.get_ref(at)?.as_str()?,
        time_unix_nano: uint(r.get(at + 1)?),
        kind: r.get_ref(at + 2)?.as_str()?,
        session: r.get_ref(at + 3)?.as_str()?,
        sessionid: r.get(at + 4)?,
        tty: r.get_ref(at + 5)?.as_str()?,
        identity_kind: r.get(at + 6)?,
        identity_name: r.get_ref(at + 7)?.as_str()?,
        grant: r.get_ref(at + 8)?.as_str()?,
        tty_bytes: uint(r.get(at + 9)?),
    })
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            Self::Full(Arc::new(e))
        } else {
            Self::Backend(Arc::new(e))
        }
    }
}

pub struct Sqlite {
    path: String,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    checkpointer: Checkpointer,
    /// The count of grant changes (`changes`) this store's own last grant commit left:
    /// `follow_changes` tells only of others'.
    own_grant_changes: Arc<AtomicI64>,
}

/// Copies the WAL's committed pages into the database on a thread of its own, woken after
/// each commit. Left to SQLite, the writer does it inside a commit whenever the WAL passes
/// 1,000 pages, copying and syncing the database while every acknowledgement waits
/// (docs/evidence.md, "Measured").
struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// WAL bytes past which the writer checkpoints itself, should the checkpointer fall behind
/// or fail: bounds the WAL whatever happens to it. SQLite counts it in pages of the store's
/// own size, which a store made before `PAGE_BYTES` keeps.
const WAL_BYTES_MAX: u32 = 64 << 20;

/// The writer's page cache, in KiB, against SQLite's 2 MiB. A commit of a fleet's batches
/// touches a page per host in each per-host index: 1,000 hosts make about 3,000 pages,
/// some 48 MiB of 16 KiB pages, and a 2 MiB cache read each of them back from the kernel
/// on every commit (a fifth of the writer's time, docs/reliability.md). SQLite takes the
/// memory as the writer reads pages and keeps it, so any collector holds up to this much
/// more once its store has grown past it.
const WRITER_CACHE_KIB: i64 = 64 << 10;

/// Readers kept open between reads. A burst of reads opens as many connections as it needs
/// at once; past this many, a connection is closed after its read, or the pages each one
/// caches (up to SQLite's 2 MiB) would stay held for every reader a burst ever needed.
const READERS_KEPT: usize = 8;

/// The page size of a store this collector creates. Against SQLite's 4 KiB, a page holds
/// four times the keys of each of the events' B-trees, so a large commit splits and writes
/// fewer pages: bulk ingest is about 15% faster, and small commits across many chains pay
/// a little latency for it (docs/collector.md, "Page size"). A store keeps the page size
/// it was made with: one made with smaller pages keeps them.
const PAGE_BYTES: u32 = 16 << 10;

impl Checkpointer {
    fn start(path: &str) -> Result<Self, Arc<dyn std::error::Error + Send + Sync>> {
        let conn = connect(path).map_err(|e| Arc::new(e) as Arc<_>)?;
        // Woken once whatever the number of commits since: a wake-up waiting is enough.
        let (wake, woken) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "checkpointing the store's WAL");
                    }
                }
            })
            .map_err(|e| Arc::new(e) as Arc<_>)?;
        Ok(Self {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    fn wake(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often the revoked hosts and grant changes are counted for another collector's.
const POLL_CHANGES: std::time::Duration = std::time::Duration::from_millis(250);

/// A reader's page cache, in KiB: SQLite's default, which readers keep.
const READER_CACHE_KIB: usize = 2048;

/// Slots in the page caches' pool: the writer's cache, the readers kept, and four more
/// readers' (the checkpointer's, a burst's), in pages of `PAGE_BYTES`.
const POOL_PAGES: usize = (WRITER_CACHE_KIB as usize + (READERS_KEPT + 4) * READER_CACHE_KIB)
    / (PAGE_BYTES as usize >> 10);

/// Gives every connection's page cache one pool of fixed slots, once, before SQLite is first
/// used. Without it each cached page is a `malloc` of 16 KiB and more, taken and freed by
/// whichever thread reads it, in that thread's arena: under a fleet's load the collector's
/// memory grew about 1 MiB a minute with no level in sight, though the caches themselves
/// stay within their bounds (docs/reliability.md, "A pool for the page caches"). Slots are
/// reused, never returned, so the pages SQLite caches hold at most the pool's span. SQLite
/// writes a link into each slot at the start, which takes a quarter of the pool's memory
/// (about 22 MiB) at once. A cache that wants more pages than the pool has left takes
/// them from `malloc`, as before.
fn page_pool() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut header: std::ffi::c_int = 0;
        // SAFETY: SQLite's documented configuration calls with the arguments each option
        // takes, made before any connection: the pool is leaked, so it outlives every use.
        let done = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PCACHE_HDRSZ,
                &raw mut header,
            );
            // A multiple of 8 bytes, and each slot 8-aligned, as SQLite needs.
            let words = (PAGE_BYTES as usize + usize::try_from(header).unwrap_or(0)).div_ceil(8);
            let pool: &'static mut [u64] =
                Box::leak(vec![0u64; words * POOL_PAGES].into_boxed_slice());
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                pool.as_mut_ptr().cast::<std::ffi::c_void>(),
                std::ffi::c_int::try_from(words * 8).unwrap_or(0),
                std::ffi::c_int::try_from(POOL_PAGES).unwrap_or(0),
            )
        };
        // Refused once SQLite is in use (by another library of the process, say): the
        // caches then `malloc` their pages, as without the pool.
        if done != rusqlite::ffi::SQLITE_OK {
            tracing::warn!(code = done, "SQLite refused the page caches' pool");
        }
    });
}

fn connect(path: &str) -> rusqlite::Result<Connection> {
    page_pool();
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Only a new, empty store takes it, and only before WAL mode is set: after that it is a
    // no-op that leaves the page size as it was.
    conn.pragma_update(None, "page_size", PAGE_BYTES)?;
    // Reading the journal mode is the first access to the file: a file that is not SQLite
    // fails here, before anything is written to it.
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Makes the store's file, and its directory when missing, private (0600 in 0700): it holds
/// every keystroke recorded. SQLite gives its journal files the mode of the main file.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl Sqlite {
    /// Opens the store at `path`, creating it, or bringing one made by an older collector to
    /// this one's schema.
    pub fn open(path: &str) -> Result<Self, StoreError> {
        let failed = |source: Arc<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        private_file(std::path::Path::new(path)).map_err(|e| failed(Arc::new(e)))?;
        let mut writer = connect(path).map_err(|e| failed(Arc::new(e)))?;
        schema::migrate(&mut writer).map_err(|e| failed(Arc::new(e)))?;
        let page: u32 = writer
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(|e| failed(Arc::new(e)))?;
        writer
            .pragma_update(None, "wal_autocheckpoint", WAL_BYTES_MAX / page.max(512))
            .map_err(|e| failed(Arc::new(e)))?;
        // A negative size is in KiB, whatever the page size.
        writer
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(|e| failed(Arc::new(e)))?;
        let checkpointer = Checkpointer::start(path).map_err(failed)?;
        Ok(Self {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            checkpointer,
            own_grant_changes: Arc::new(AtomicI64::new(0)),
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
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < READERS_KEPT {
            pool.push(conn);
        } else {
            // Closed outside the lock: other reads need the pool meanwhile.
            drop(pool);
            drop(conn);
        }
        Ok(out?)
    }
}

/// The join tokens and revoked hosts of a commit, in its transaction, and its move of the
/// store's count of decisions.
fn commit_trust(tx: &rusqlite::Transaction<'_>, commit: &Commit) -> Result<(), StoreError> {
    if let Some(d) = commit.decisions {
        tx.prepare_cached(DECISIONS_MOVE)?
            .query_row(params![int(d.after), int(d.made)], |_| Ok(()))
            .optional()?
            .ok_or_else(|| Moved::decisions(d.made))?;
    }
    let mut token = tx.prepare_cached(
        "INSERT INTO tokens (hash, host, created, expires, creator, used) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (hash) DO UPDATE SET used = excluded.used",
    )?;
    for t in &commit.tokens {
        token.execute(params![
            &t.hash[..],
            t.host,
            int(t.created_unix_nano),
            int(t.expires_unix_nano),
            t.creator,
            int(t.used_unix_nano)
        ])?;
    }
    let mut revoked = tx.prepare_cached(
        "INSERT INTO revoked_hosts (host, time, actor, reason) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (host) DO NOTHING",
    )?;
    for r in &commit.revoked_hosts {
        revoked.execute(params![r.host, int(r.time_unix_nano), r.actor, r.reason])?;
    }
    Ok(())
}

/// The hosts' logs, cosigned checkpoints and forks of a commit, in its transaction.
fn commit_logs(tx: &rusqlite::Transaction<'_>, commit: &Commit) -> Result<(), StoreError> {
    let mut log = tx.prepare_cached(&log_upsert(Dialect::Sqlite))?;
    for l in &commit.logs {
        let set = log.execute(params![
            l.host,
            int(l.size),
            l.frontier,
            int(l.cosigned_size),
            &l.cosigned_root[..],
            l.cosigned_note
        ])?;
        if set == 0 {
            return Err(Moved::log(&l.host, l.size));
        }
    }
    let mut cert = tx.prepare_cached("INSERT OR IGNORE INTO certs (hash, pem) VALUES (?1, ?2)")?;
    let mut checkpoint = tx.prepare_cached(
        "INSERT INTO log_checkpoints (host, size, root, note, cert, received) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for c in &commit.log_checkpoints {
        let hash = sha2::Sha256::digest(c.cert_pem.as_bytes()).to_vec();
        cert.execute(params![hash, c.cert_pem])?;
        checkpoint.execute(params![
            c.host,
            int(c.size),
            &c.root[..],
            c.note,
            hash,
            int(c.received_unix_nano)
        ])?;
    }
    let mut prune = tx.prepare_cached(
        "INSERT INTO prunes (host, end_index, frontier) VALUES (?1, ?2, ?3) \
         ON CONFLICT (host) DO UPDATE SET end_index = excluded.end_index, \
         frontier = excluded.frontier",
    )?;
    let mut delete = tx.prepare_cached(
        "DELETE FROM events WHERE host = ?1 AND log_index IS NOT NULL AND log_index < ?2",
    )?;
    for p in &commit.prunes {
        delete.execute(params![p.host, int(p.end)])?;
        prune.execute(params![p.host, int(p.end), p.frontier])?;
    }
    let mut hold = tx.prepare_cached(
        "INSERT OR IGNORE INTO holds (session, time, actor, reason) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for h in &commit.holds {
        hold.execute(params![h.session, int(h.time_unix_nano), h.actor, h.reason])?;
    }
    let mut fork = tx.prepare_cached(
        "INSERT INTO checkpoint_forks (host, size, note, received) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for f in &commit.forks {
        fork.execute(params![
            f.host,
            int(f.size),
            f.note,
            int(f.received_unix_nano)
        ])?;
    }
    Ok(())
}

fn log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    Ok(LogRow {
        host: r.get(0)?,
        size: uint(r.get(1)?),
        frontier: r.get(2)?,
        cosigned_size: uint(r.get(3)?),
        cosigned_root: hash32(r.get(4)?),
        cosigned_note: r.get(5)?,
    })
}

fn chain_state(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainState> {
    let head: Vec<u8> = r.get(3)?;
    Ok(ChainState {
        chain_id: r.get(0)?,
        host: r.get(1)?,
        next_seq: uint(r.get(2)?),
        head_hash: head.try_into().unwrap_or(GENESIS),
    })
}

impl Store for Sqlite {
    fn chains(&self) -> Result<Vec<ChainState>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!("{CHAIN_COLUMNS} ORDER BY id"))?
                .query_map([], chain_state)?
                .collect()
        })
    }

    fn host_chains(&self, host: &str) -> Result<Vec<ChainState>, StoreError> {
        self.read(|conn| {
            // The index `chains_host` (host, id) finds them in this order.
            conn.prepare_cached(&format!("{CHAIN_COLUMNS} WHERE host = ?1 ORDER BY id"))?
                .query_map([host], chain_state)?
                .collect()
        })
    }

    fn chain_starts(&self, host: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&chain_starts(Dialect::Sqlite))?
                .query_map([host], |r| Ok((r.get(0)?, r.get(1)?)))?
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

    fn decisions(&self) -> Result<u64, StoreError> {
        self.read(|conn| conn.query_row(DECISIONS, [], |r| r.get(0)).map(uint))
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction()?;
        let mut own_grants = None;
        {
            let mut chain = tx.prepare_cached(
                "INSERT INTO chains (chain_id, host, next_seq, head_hash) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (chain_id) DO UPDATE SET next_seq = excluded.next_seq, \
                 head_hash = excluded.head_hash WHERE chains.next_seq <= ?5 RETURNING id",
            )?;
            let mut event = tx.prepare_cached(
                "INSERT INTO events (chain, seq, host, time, kind, session, sessionid, \
                 identity_kind, identity_name, tty_bytes, event, hash, grant_id, tty, log_index) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for append in &commit.appends {
                let (Some(first), Some(last)) = (append.records.first(), append.records.last())
                else {
                    continue;
                };
                let id: i64 = chain
                    .query_row(
                        params![
                            append.chain_id,
                            append.chain_host,
                            int(last.seq + 1),
                            &last.hash[..],
                            int(first.seq)
                        ],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or_else(|| Moved::chain(&append.chain_id, first.seq))?;
                for r in &append.records {
                    event.execute(params![
                        id,
                        int(r.seq),
                        r.derived.host,
                        int(r.derived.time_unix_nano),
                        r.derived.kind.name(),
                        r.derived.session,
                        r.derived.sessionid,
                        r.derived.identity_kind,
                        r.derived.identity_name,
                        int(r.derived.tty_bytes),
                        &r.event[..],
                        &r.hash[..],
                        r.derived.grant,
                        r.derived.tty,
                        r.log_index.map(int),
                    ])?;
                }
            }
            let mut conflict = tx.prepare_cached(
                "INSERT INTO conflicts (chain, seq, event, hash, stored_hash, received) \
                 SELECT id, ?2, ?3, ?4, ?5, ?6 FROM chains WHERE chain_id = ?1",
            )?;
            for c in &commit.conflicts {
                conflict.execute(params![
                    c.chain_id,
                    int(c.seq),
                    &c.event[..],
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
            if !commit.grants.is_empty() {
                let count: i64 = tx
                    .prepare_cached(
                        "INSERT INTO changes (kind, count) VALUES ('grants', 1) \
                         ON CONFLICT (kind) DO UPDATE SET count = count + 1 RETURNING count",
                    )?
                    .query_row([], |r| r.get(0))?;
                own_grants = Some(count);
            }
        }
        commit_trust(&tx, commit)?;
        commit_logs(&tx, commit)?;
        tx.commit()?;
        if let Some(count) = own_grants {
            self.own_grant_changes.store(count, Ordering::Relaxed);
        }
        self.checkpointer.wake();
        Ok(())
    }

    fn reach(&self) -> Result<Reach, StoreError> {
        // One writer at a time holds the database from taking its ids to its commit, so a
        // row is stored by the time a higher id is: every row read is settled.
        let row = self.read(|conn| conn.query_row(LAST_ROW, [], |r| r.get(0)))?;
        Ok(Reach {
            row,
            settled_by: 0,
            oldest_running: 0,
        })
    }

    fn after_row(
        &self,
        filter: &EventFilter,
        after: i64,
        up_to: i64,
        bound: Bound,
    ) -> Result<Page<i64>, StoreError> {
        let conditions = Conditions::after_row(Dialect::Sqlite, filter, after, up_to);
        Ok(by_row(
            self.read(|conn| bounded(conn, conditions, "e.id", bound))?,
        ))
    }

    fn search(
        &self,
        filter: &EventFilter,
        after: Cursor,
        bound: Bound,
    ) -> Result<Page<Cursor>, StoreError> {
        let conditions = Conditions::search(Dialect::Sqlite, filter, after);
        self.read(|conn| bounded(conn, conditions, "e.time, e.id", bound))
    }

    fn sessions(
        &self,
        query: &SessionQuery,
        each: &mut dyn FnMut(SessionRow) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.read(|conn| sessions::sessions(conn, query, each))
    }

    fn chain_rows(
        &self,
        chain_id: &str,
        from_seq: u64,
        limit: usize,
        each: &mut dyn FnMut(ChainRow<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.id, e.seq, e.event, e.hash, e.host, e.time, e.kind, e.session, \
                 e.sessionid, e.tty, e.identity_kind, e.identity_name, e.grant_id, e.tty_bytes \
                 FROM events e JOIN chains c ON c.id = e.chain \
                 WHERE c.chain_id = ?1 AND e.seq >= ?2 ORDER BY e.seq LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![chain_id, int(from_seq), int(limit as u64)])?;
            while let Some(r) = rows.next()? {
                let row = ChainRow {
                    row: r.get(0)?,
                    seq: uint(r.get(1)?),
                    event: r.get_ref(2)?.as_blob()?,
                    hash: r.get_ref(3)?.as_blob()?,
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
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT k.size FROM checkpoints k JOIN chains c ON c.id = k.chain \
                 WHERE c.chain_id = ?1 ORDER BY k.id DESC LIMIT 1",
            )?
            .query_row([chain_id], |r| r.get::<_, i64>(0))
            .optional()
            .map(|size| size.map(uint))
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
            // `kind = 'violation'` as the partial index `events_violations` spells it.
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

    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT host, created, expires, creator, used FROM tokens WHERE hash = ?1",
                [&hash[..]],
                |r| {
                    Ok(TokenRow {
                        hash: *hash,
                        host: r.get(0)?,
                        created_unix_nano: uint(r.get(1)?),
                        expires_unix_nano: uint(r.get(2)?),
                        creator: r.get(3)?,
                        used_unix_nano: uint(r.get(4)?),
                    })
                },
            )
            .optional()
        })
    }

    fn logs(&self) -> Result<Vec<LogRow>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!("{LOG_COLUMNS} ORDER BY host"))?
                .query_map([], log_row)?
                .collect()
        })
    }

    fn log(&self, host: &str) -> Result<Option<LogRow>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!("{LOG_COLUMNS} WHERE host = ?1"))?
                .query_row([host], log_row)
                .optional()
        })
    }

    fn log_leaves(
        &self,
        host: &str,
        from: u64,
        limit: usize,
        each: &mut dyn FnMut(LeafRow<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.log_index, e.id, c.chain_id, e.seq, e.event, e.hash, e.host, e.time, \
                 e.kind, e.session, e.sessionid, e.tty, e.identity_kind, e.identity_name, \
                 e.grant_id, e.tty_bytes FROM events e JOIN chains c ON c.id = e.chain \
                 WHERE e.host = ?1 AND e.log_index >= ?2 ORDER BY e.log_index LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![host, int(from), int(limit as u64)])?;
            while let Some(r) = rows.next()? {
                let leaf = LeafRow {
                    log_index: uint(r.get(0)?),
                    row: r.get(1)?,
                    chain_id: r.get_ref(2)?.as_str()?,
                    seq: uint(r.get(3)?),
                    event: r.get_ref(4)?.as_blob()?,
                    hash: r.get_ref(5)?.as_blob()?,
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
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT k.size, k.root, k.note, COALESCE(c.pem, ''), k.received \
                 FROM log_checkpoints k LEFT JOIN certs c ON c.hash = k.cert \
                 WHERE k.host = ?1 ORDER BY k.id",
            )?
            .query_map([host], |r| {
                Ok(LogCheckpoint {
                    host: host.to_owned(),
                    size: uint(r.get(0)?),
                    root: hash32(r.get(1)?),
                    note: r.get(2)?,
                    cert_pem: r.get(3)?,
                    received_unix_nano: uint(r.get(4)?),
                })
            })?
            .collect()
        })
    }

    fn prune(&self, host: &str) -> Result<Option<PruneRow>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT end_index, frontier FROM prunes WHERE host = ?1")?
                .query_row([host], |r| {
                    Ok(PruneRow {
                        host: host.to_owned(),
                        end: uint(r.get(0)?),
                        frontier: r.get(1)?,
                    })
                })
                .optional()
        })
    }

    fn first_kept(
        &self,
        host: &str,
        from: u64,
        cutoff_unix_nano: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT log_index FROM events WHERE host = ?1 AND log_index >= ?2 \
                 AND (time >= ?3 OR session IN (SELECT session FROM holds)) \
                 ORDER BY log_index LIMIT 1",
            )?
            .query_row(params![host, int(from), int(cutoff_unix_nano)], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|i| i.map(uint))
        })
    }

    fn session_leaves(&self, key: &str) -> Result<Vec<SessionLeaf>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT c.chain_id, e.seq, e.log_index, e.event, e.hash FROM events e \
                 JOIN chains c ON c.id = e.chain \
                 WHERE e.session = ?1 AND e.log_index IS NOT NULL ORDER BY e.log_index",
            )?
            .query_map([key], |r| {
                Ok(SessionLeaf {
                    chain_id: r.get(0)?,
                    seq: uint(r.get(1)?),
                    log_index: uint(r.get(2)?),
                    event: r.get(3)?,
                    hash: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    fn checkpointed_hosts(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT DISTINCT host FROM log_checkpoints ORDER BY host")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
    }

    /// Polls the count of revoked hosts and of grant changes: `SQLite` has no
    /// notifications. Two collectors on one file then refuse a host the other revoked, and
    /// send their agents a grant the other changed, within `POLL_CHANGES`.
    fn follow_changes(&self, each: Box<dyn Fn(Changed) + Send>) -> Result<(), StoreError> {
        let conn = connect(&self.path)?;
        let counts = |conn: &Connection| {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM revoked_hosts), \
                 (SELECT COALESCE(MAX(count), 0) FROM changes WHERE kind = 'grants')",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
        };
        let (mut revoked, mut grants) = counts(&conn)?;
        let own = Arc::clone(&self.own_grant_changes);
        std::thread::Builder::new()
            .name("store-changes".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(POLL_CHANGES);
                    let now = match counts(&conn) {
                        Ok(now) => now,
                        Err(error) => {
                            tracing::warn!(%error, "cannot read the store's changes");
                            continue;
                        }
                    };
                    if now.0 != revoked {
                        revoked = now.0;
                        each(Changed::RevokedHosts);
                    }
                    // Left so by this collector's own commit: its agents were sent views read
                    // after it, which hold any change before it too.
                    if now.1 != grants && now.1 != own.load(Ordering::Relaxed) {
                        each(Changed::Grants);
                    }
                    grants = now.1;
                }
            })
            .map_err(|e| StoreError::Backend(Arc::new(e)))?;
        Ok(())
    }

    fn record_contacts(&self, heard: &[(String, u64)]) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(CONTACT_UPSERT)?;
            for (host, seen) in heard {
                upsert.execute(params![host, int(*seen)])?;
            }
        }
        Ok(tx.commit()?)
    }

    fn contacts(&self) -> Result<Vec<HostContact>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(CONTACTS)?
                .query_map([], |r| {
                    Ok(HostContact {
                        host: r.get(0)?,
                        seen_unix_nano: uint(r.get(1)?),
                        silent: r.get(2)?,
                    })
                })?
                .collect()
        })
    }

    fn mark_silent(&self, host: &str, seen: u64) -> Result<bool, StoreError> {
        let conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = if seen == 0 {
            conn.execute(FIRST_SILENT, params![host])?
        } else {
            conn.execute(NEXT_SILENT, params![host, int(seen)])?
        };
        Ok(changed == 1)
    }

    fn revoked_hosts(&self) -> Result<Vec<RevokedHost>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT host, time, actor, reason FROM revoked_hosts")?
                .query_map([], |r| {
                    Ok(RevokedHost {
                        host: r.get(0)?,
                        time_unix_nano: uint(r.get(1)?),
                        actor: r.get(2)?,
                        reason: r.get(3)?,
                    })
                })?
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use proto::{chain::Chain, kind::Kind};

    use super::*;
    use crate::store::{Append, Derived, Record};

    fn records(chain: &mut Chain, n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let event = vec![u8::try_from(i).unwrap(); 8];
                let (seq, hash) = chain.link(&event);
                Record {
                    seq,
                    derived: Derived::bare("h".into(), 1, Kind::Exec),
                    event: event.into(),
                    hash,
                    log_index: Some(seq),
                }
            })
            .collect()
    }

    fn log(size: u64) -> LogRow {
        LogRow {
            host: "h".into(),
            size,
            frontier: Vec::new(),
            cosigned_size: 0,
            cosigned_root: [0; 32],
            cosigned_note: String::new(),
        }
    }

    /// However many reads ran at once, no more than `READERS_KEPT` connections stay open after.
    #[test]
    fn a_burst_of_reads_leaves_a_bounded_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(dir.path().join("s.db").to_str().unwrap()).unwrap();
        let burst = READERS_KEPT * 3;
        // Every read waits for all the others: each holds a connection of its own.
        let together = std::sync::Barrier::new(burst);
        std::thread::scope(|scope| {
            for _ in 0..burst {
                scope.spawn(|| {
                    store
                        .read(|conn| {
                            together.wait();
                            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                        })
                        .unwrap()
                });
            }
        });
        assert_eq!(store.readers.lock().unwrap().len(), READERS_KEPT);
    }

    /// A new store takes `PAGE_BYTES`; one made with SQLite's default keeps its pages, and its
    /// WAL bound stays the same number of bytes.
    #[test]
    fn a_new_store_has_large_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let pages = |store: &Sqlite| {
            let writer = store.writer.lock().unwrap();
            let size: u32 = writer
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .unwrap();
            let bound: u32 = writer
                .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
                .unwrap();
            (size, size * bound)
        };
        let new = dir.path().join("new.db");
        assert_eq!(
            pages(&Sqlite::open(new.to_str().unwrap()).unwrap()),
            (PAGE_BYTES, WAL_BYTES_MAX)
        );
        let old = dir.path().join("old.db");
        let made = Connection::open(&old).unwrap();
        made.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .unwrap();
        drop(made);
        let store = Sqlite::open(old.to_str().unwrap()).unwrap();
        assert_eq!(pages(&store), (4096, WAL_BYTES_MAX));
        store
            .commit(&Commit {
                appends: vec![Append {
                    chain_id: "c".into(),
                    chain_host: "h".into(),
                    records: records(&mut Chain::new("c".into()), 3),
                }],
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(store.chains().unwrap()[0].next_seq, 3);
    }

    /// Of collectors that judged a host silent on the same contact, one alone marks it so;
    /// a contact noted later, or one older than the newest, makes it not silent again.
    #[test]
    fn a_host_is_marked_silent_once_per_contact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(dir.path().join("s.db").to_str().unwrap()).unwrap();
        let row = |seen, silent| HostContact {
            host: "h".into(),
            seen_unix_nano: seen,
            silent,
        };
        // Never heard: the first to mark it wins.
        assert!(store.mark_silent("h", 0).unwrap());
        assert!(!store.mark_silent("h", 0).unwrap());
        assert_eq!(store.contacts().unwrap(), [row(0, true)]);
        store.record_contacts(&[("h".into(), 20)]).unwrap();
        store.record_contacts(&[("h".into(), 10)]).unwrap();
        assert_eq!(store.contacts().unwrap(), [row(20, false)]);
        // Judged on an older contact: the host was heard since.
        assert!(!store.mark_silent("h", 10).unwrap());
        assert!(store.mark_silent("h", 20).unwrap());
        assert!(!store.mark_silent("h", 20).unwrap());
        assert_eq!(store.contacts().unwrap(), [row(20, true)]);
    }

    /// Another collector on the same file that read the store before this commit cannot move
    /// a chain's head or a host's log back: its commit fails whole, and names why.
    #[test]
    fn a_commit_from_behind_moves_neither_a_chain_nor_a_log_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(dir.path().join("s.db").to_str().unwrap()).unwrap();
        let append = |records| Append {
            chain_id: "c".into(),
            chain_host: "h".into(),
            records,
        };
        let mut ahead = Chain::new("c".into());
        let mut behind = Chain::new("c".into());
        store
            .commit(&Commit {
                appends: vec![append(records(&mut ahead, 3))],
                logs: vec![log(3)],
                ..Commit::default()
            })
            .unwrap();

        let stale = store.commit(&Commit {
            appends: vec![append(records(&mut behind, 1))],
            ..Commit::default()
        });
        let e = stale.unwrap_err().to_string();
        assert!(
            e.contains("chain c at seq 0: another writer moved it first"),
            "{e}"
        );
        let stale = store.commit(&Commit {
            logs: vec![log(2)],
            ..Commit::default()
        });
        let e = stale.unwrap_err().to_string();
        assert!(e.contains("the log of host h at size 2"), "{e}");

        assert_eq!(store.chains().unwrap()[0].next_seq, 3);
        assert_eq!(store.log("h").unwrap().unwrap().size, 3);
    }
}
