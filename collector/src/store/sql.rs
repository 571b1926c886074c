//! What the SQL backends share: integer conversions, the conditions of the event reads, the
//! columns a stored event, chain or log is read from, and turning those columns back into a
//! `StoredEvent`; the page a read takes. Each backend binds the arguments with its own
//! driver.

use prost::Message as _;
use proto::{
    kind::Kind,
    v1::{Event, StoredEvent},
};

use super::{Bound, Cursor, EVENT_FRAMING, EventFilter, Page, SessionMatch};

/// Values are bounded at ingest to what signed 64-bit SQL integers hold.
pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A stored 32-byte hash; zeros for one of another length (the store was edited: verify
/// names it).
pub(super) fn hash32(bytes: Vec<u8>) -> [u8; 32] {
    bytes.try_into().unwrap_or([0; 32])
}

/// The columns a `ChainState` is read from, in its order.
pub(super) const CHAIN_COLUMNS: &str = "SELECT chain_id, host, next_seq, head_hash FROM chains";

/// The first record of each chain of one host, with the chain's id, by the index on
/// (host, id) and the unique one on (chain, seq); its one argument is the host.
pub(super) fn chain_starts(dialect: Dialect) -> String {
    format!(
        "SELECT c.chain_id, e.event FROM chains c JOIN events e ON e.chain = c.id AND e.seq = 0 \
         WHERE c.host = {} ORDER BY c.id",
        dialect.mark(1)
    )
}

/// The columns a `LogRow` is read from, in its order.
pub(super) const LOG_COLUMNS: &str =
    "SELECT host, size, frontier, cosigned_size, cosigned_root, cosigned_note FROM logs";

/// Sets a host's log as a commit leaves it, never backwards: a writer that read it before
/// another collector on the same database moved it sets nothing. Its arguments are the
/// `LogRow`'s fields in order.
pub(super) fn log_upsert(dialect: Dialect) -> String {
    let marks: Vec<String> = (1..=6).map(|n| dialect.mark(n)).collect();
    format!(
        "INSERT INTO logs (host, size, frontier, cosigned_size, cosigned_root, cosigned_note) \
         VALUES ({}) ON CONFLICT (host) DO UPDATE SET size = excluded.size, \
         frontier = excluded.frontier, cosigned_size = excluded.cosigned_size, \
         cosigned_root = excluded.cosigned_root, cosigned_note = excluded.cosigned_note \
         WHERE logs.size <= excluded.size AND logs.cosigned_size <= excluded.cosigned_size",
        marks.join(", ")
    )
}

/// Moves the store's count of decisions to `$1` from `$2`, as the committing writer read
/// it, returning a row only when it stood at `$2`: the compare-and-set that orders the
/// decisions of every collector of the store (`Commit::decisions`). (SQLite numbers `$n` in
/// order of first use, so `$1` comes first.)
pub(super) const DECISIONS_MOVE: &str = "INSERT INTO changes (kind, count) \
     VALUES ('decisions', $1) ON CONFLICT (kind) DO UPDATE SET count = excluded.count \
     WHERE changes.count = $2 RETURNING count";

/// The store's count of decisions.
pub(super) const DECISIONS: &str =
    "SELECT COALESCE(MAX(count), 0) FROM changes WHERE kind = 'decisions'";

/// The highest row id stored.
pub(super) const LAST_ROW: &str = "SELECT COALESCE(MAX(id), 0) FROM events";

// The contacts statements number their arguments `$n`, which SQLite takes as names bound
// in order of first use: one text serves both backends.

/// `Store::record_contacts` on SQLite, one host: the host and the time heard. (PostgreSQL
/// takes every host in one statement.)
pub(super) const CONTACT_UPSERT: &str = "INSERT INTO contacts (host, seen, silent) \
     VALUES ($1, $2, 0) ON CONFLICT (host) DO UPDATE SET seen = excluded.seen, silent = 0 \
     WHERE excluded.seen > contacts.seen";

/// `Store::mark_silent` of a host with no contact noted: the host.
pub(super) const FIRST_SILENT: &str =
    "INSERT INTO contacts (host, seen, silent) VALUES ($1, 0, 1) ON CONFLICT (host) DO NOTHING";

/// `Store::mark_silent` of a host last heard at a time: the host and that time.
pub(super) const NEXT_SILENT: &str =
    "UPDATE contacts SET silent = 1 WHERE host = $1 AND seen = $2 AND silent = 0";

/// `Store::contacts`.
pub(super) const CONTACTS: &str = "SELECT host, seen, silent != 0 FROM contacts";

/// How a backend writes the placeholder of its `n`th argument (from 1).
#[derive(Clone, Copy, Debug)]
pub(super) enum Dialect {
    /// `?`: SQLite binds anonymous placeholders in order.
    Sqlite,
    /// `$n`.
    Postgres,
}

impl Dialect {
    pub(super) fn mark(self, n: usize) -> String {
        match self {
            Self::Sqlite => "?".to_owned(),
            Self::Postgres => format!("${n}"),
        }
    }
}

/// An argument of a condition.
#[derive(Clone, Debug)]
pub(super) enum Arg {
    Text(String),
    Int(i64),
}

/// Conditions and their arguments, built in order so that each placeholder names its own.
pub(super) struct Conditions {
    dialect: Dialect,
    pub(super) sql: String,
    pub(super) args: Vec<Arg>,
}

impl Conditions {
    pub(super) fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            sql: String::new(),
            args: Vec::new(),
        }
    }

    /// Binds `arg` and returns its placeholder.
    pub(super) fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        self.dialect.mark(self.args.len())
    }

    /// Appends `sql` with `{}` replaced, in order, by the placeholders of `args`.
    pub(super) fn push(&mut self, sql: &str, args: impl IntoIterator<Item = Arg>) {
        let mut args = args.into_iter();
        for (i, part) in sql.split("{}").enumerate() {
            if i > 0 {
                let mark = self.bind(args.next().expect("an argument for each {}"));
                self.sql.push_str(&mark);
            }
            self.sql.push_str(part);
        }
    }

    /// The conditions of `Store::after_row`: `filter`'s events stored after row `after` up
    /// to row `up_to`.
    pub(super) fn after_row(
        dialect: Dialect,
        filter: &EventFilter,
        after: i64,
        up_to: i64,
    ) -> Self {
        let mut conditions = Self::new(dialect);
        conditions.push(
            "e.id > {} AND e.id <= {}",
            [Arg::Int(after), Arg::Int(up_to)],
        );
        conditions.filter(filter);
        conditions
    }

    /// The conditions of `Store::search`: `filter`'s events after `after`, by time then row.
    /// The first, implied by the rest, is the range PostgreSQL's time index can start at:
    /// without it, each page scanned that index from its first entry (SQLite draws the range
    /// out of the `OR` itself).
    pub(super) fn search(dialect: Dialect, filter: &EventFilter, after: Cursor) -> Self {
        let mut conditions = Self::new(dialect);
        let time = Arg::Int(int(after.time_unix_nano));
        conditions.push(
            "e.time >= {} AND (e.time > {} OR (e.time = {} AND e.id > {}))",
            [time.clone(), time.clone(), time, Arg::Int(after.row)],
        );
        conditions.filter(filter);
        conditions
    }

    /// The read of the ids and reckoned sizes (`ROW_BYTES`) of the events these conditions
    /// select, in `order`, one row past the bound (which says whether there are more): what
    /// `page` takes.
    pub(super) fn sizes(mut self, order: &str, bound: Bound) -> Self {
        let limit = Arg::Int(int(bound.rows.saturating_add(1) as u64));
        let conditions = std::mem::take(&mut self.sql);
        self.sql = format!(
            "SELECT e.id, CAST({ROW_BYTES} AS BIGINT) FROM events e \
             JOIN chains c ON c.id = e.chain WHERE {conditions} ORDER BY {order} LIMIT "
        );
        let mark = self.bind(limit);
        self.sql.push_str(&mark);
        self
    }

    /// Appends the filter's conditions on events `e`, each preceded by AND.
    pub(super) fn filter(&mut self, f: &EventFilter) {
        let equals = |this: &mut Self, column: &str, value: Arg| {
            this.push(&format!(" AND e.{column} = {{}}"), [value]);
        };
        if let Some(host) = &f.host {
            equals(self, "host", Arg::Text(host.clone()));
        }
        if let Some(identity) = &f.identity {
            equals(self, "identity_name", Arg::Text(identity.clone()));
        }
        match &f.session {
            Some(SessionMatch::Key(key)) => equals(self, "session", Arg::Text(key.clone())),
            Some(SessionMatch::Id(id)) => equals(self, "sessionid", Arg::Int(i64::from(*id))),
            None => {}
        }
        if let Some(tty) = &f.tty {
            equals(self, "tty", Arg::Text(tty.clone()));
        }
        if !f.kinds.is_empty() {
            self.sql.push_str(" AND e.kind IN (");
            for (i, kind) in f.kinds.iter().enumerate() {
                if i > 0 {
                    self.sql.push(',');
                }
                let mark = self.bind(Arg::Text(kind.name().to_owned()));
                self.sql.push_str(&mark);
            }
            self.sql.push(')');
        }
        if f.since_unix_nano > 0 {
            self.push(" AND e.time >= {}", [Arg::Int(int(f.since_unix_nano))]);
        }
        if f.until_unix_nano > 0 {
            self.push(" AND e.time < {}", [Arg::Int(int(f.until_unix_nano))]);
        }
    }
}

/// The columns a `StoredEvent` is made of, in the order `StoredRow` takes them.
pub(super) const STORED_COLUMNS: &str = "SELECT e.id, e.time, e.host, c.chain_id, e.seq, e.session, e.event, e.hash, \
     e.kind FROM events e JOIN chains c ON c.id = e.chain WHERE ";

/// What a row is reckoned to take in a response before it is read, besides
/// `EVENT_FRAMING`: its stored bytes. Both engines read a blob's length without reading the
/// blob.
pub(super) const ROW_BYTES: &str = "length(e.event) + length(e.hash) + octet_length(e.host) \
     + octet_length(e.session) + octet_length(c.chain_id)";

/// A row of `STORED_COLUMNS`, as a backend read it.
pub(super) struct StoredRow<'r> {
    pub(super) host: String,
    pub(super) chain_id: String,
    pub(super) seq: u64,
    pub(super) session: String,
    pub(super) event: &'r [u8],
    pub(super) hash: Vec<u8>,
    pub(super) kind: &'r str,
}

impl StoredRow<'_> {
    /// The event as a response carries it. A stored event that no longer decodes (the
    /// store was edited) is returned without its body rather than hiding the row; a
    /// malformed one without its body and with its fault.
    pub(super) fn into_stored(self) -> StoredEvent {
        let (event, malformed) = if self.kind == Kind::Malformed.name() {
            let fault = verifier::columns::derive(&self.host, self.seq, self.event)
                .ok()
                .and_then(|d| d.fault);
            (None, fault.unwrap_or_else(|| Kind::Malformed.name().into()))
        } else {
            (Event::decode(self.event).ok(), String::new())
        };
        StoredEvent {
            host: self.host,
            chain_id: self.chain_id,
            seq: self.seq,
            session: self.session,
            event,
            hash: self.hash,
            malformed,
        }
    }
}

/// The page `bound` lets one read hold of the rows whose ids and reckoned sizes (stored
/// bytes, `ROW_BYTES`) are `sizes`, in order, one row past the bound included: each taken row
/// is read by `read` and counted as it is encoded (a malformed record is sent with its fault
/// rather than its bytes), so whatever plan the engine picks (a sort, say), no more than the
/// page is ever held.
pub(super) fn page<E>(
    sizes: &[(i64, i64)],
    bound: Bound,
    mut read: impl FnMut(i64) -> Result<(Cursor, StoredEvent), E>,
) -> Result<Page<Cursor>, E> {
    let taken = taken(sizes, bound);
    let (mut rows, mut bytes) = (Vec::with_capacity(taken), 0);
    for (row, _) in &sizes[..taken] {
        let (cursor, event) = read(*row)?;
        let size = prost::encoding::message::encoded_len(1, &event);
        if !bound.admits(rows.len(), bytes, size) {
            break;
        }
        bytes += size;
        rows.push((cursor, event));
    }
    Ok(Page {
        more: rows.len() < sizes.len(),
        rows,
    })
}

/// How many of the rows whose ids and reckoned sizes are `sizes` `page` reads: those the
/// bound admits by their reckoned sizes.
pub(super) fn taken(sizes: &[(i64, i64)], bound: Bound) -> usize {
    let size = |bytes: i64| usize::try_from(bytes).unwrap_or(usize::MAX);
    bound.take(
        sizes
            .iter()
            .map(|(_, bytes)| size(*bytes).saturating_add(EVENT_FRAMING)),
    )
}

/// A page of `Store::after_row`: its rows by row id.
pub(super) fn by_row(page: Page<Cursor>) -> Page<i64> {
    Page {
        rows: page.rows.into_iter().map(|(c, e)| (c.row, e)).collect(),
        more: page.more,
    }
}

#[cfg(test)]
mod tests {
    use proto::kind::Kind;

    use super::{Arg, Conditions, Dialect};
    use crate::store::{Bound, Cursor, EventFilter, SessionMatch};

    fn filter() -> EventFilter {
        EventFilter {
            host: Some("h".into()),
            session: Some(SessionMatch::Id(7)),
            kinds: vec![Kind::Exec, Kind::TtyIn],
            since_unix_nano: 5,
            ..EventFilter::default()
        }
    }

    #[test]
    fn each_placeholder_names_its_own_argument_in_either_dialect() {
        let mut pg = Conditions::new(Dialect::Postgres);
        pg.push("e.id > {}", [Arg::Int(1)]);
        pg.filter(&filter());
        assert_eq!(
            pg.sql,
            "e.id > $1 AND e.host = $2 AND e.sessionid = $3 AND e.kind IN ($4,$5) \
             AND e.time >= $6"
        );
        let mut lite = Conditions::new(Dialect::Sqlite);
        lite.push("e.id > {}", [Arg::Int(1)]);
        lite.filter(&filter());
        assert_eq!(
            lite.sql,
            "e.id > ? AND e.host = ? AND e.sessionid = ? AND e.kind IN (?,?) AND e.time >= ?"
        );
        assert_eq!(pg.args.len(), 6);
        assert!(matches!(&pg.args[4], Arg::Text(k) if k == Kind::TtyIn.name()));
    }

    #[test]
    fn a_sizes_read_binds_one_row_past_the_bound_last() {
        let bound = Bound {
            rows: 10,
            bytes: 100,
        };
        let sizes = Conditions::after_row(Dialect::Postgres, &filter(), 3, 9).sizes("e.id", bound);
        assert!(
            sizes.sql.ends_with("ORDER BY e.id LIMIT $8"),
            "{}",
            sizes.sql
        );
        assert!(
            sizes
                .sql
                .contains("WHERE e.id > $1 AND e.id <= $2 AND e.host = $3")
        );
        assert!(matches!(sizes.args.last(), Some(Arg::Int(11))));
        let lite = Conditions::search(Dialect::Sqlite, &EventFilter::default(), Cursor::default())
            .sizes("e.time, e.id", bound);
        assert!(
            lite.sql.ends_with("ORDER BY e.time, e.id LIMIT ?"),
            "{}",
            lite.sql
        );
        assert_eq!(lite.args.len(), 5);
    }
}
