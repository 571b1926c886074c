//! The SQL every part of the backend shares: integer conversions, the filter conditions, and
//! reading stored events back.

use prost::Message as _;
use proto::{
    kind::Kind,
    v1::{Event, Grant, StoredEvent},
};
use rusqlite::{
    Connection, params_from_iter,
    types::{Type, Value},
};

use crate::store::{Bound, Cursor, EVENT_FRAMING, EventFilter, Page, SessionMatch};

/// The columns a `StoredEvent` is made of, in this order.
pub(super) const STORED_COLUMNS: &str = "SELECT e.id, e.time, e.host, c.chain_id, e.seq, e.session, e.event, e.hash, \
     e.kind FROM events e JOIN chains c ON c.id = e.chain WHERE ";

/// Values are bounded at ingest to what SQLite's signed integers hold.
pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn decode_grant(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Grant> {
    Grant::decode(row.get_ref(column)?.as_blob()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Blob, Box::new(e)))
}

/// Appends the filter's conditions (each preceded by AND) and their arguments.
pub(super) fn filter_sql(f: &EventFilter, sql: &mut String, args: &mut Vec<Value>) {
    let mut equals = |column: &str, value: Value| {
        sql.push_str(" AND e.");
        sql.push_str(column);
        sql.push_str(" = ?");
        args.push(value);
    };
    if let Some(host) = &f.host {
        equals("host", Value::Text(host.clone()));
    }
    if let Some(identity) = &f.identity {
        equals("identity_name", Value::Text(identity.clone()));
    }
    match &f.session {
        Some(SessionMatch::Key(key)) => equals("session", Value::Text(key.clone())),
        Some(SessionMatch::Id(id)) => equals("sessionid", Value::Integer(i64::from(*id))),
        None => {}
    }
    if let Some(tty) = &f.tty {
        equals("tty", Value::Text(tty.clone()));
    }
    if !f.kinds.is_empty() {
        sql.push_str(" AND e.kind IN (");
        for (i, kind) in f.kinds.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            args.push(Value::Text(kind.name().to_owned()));
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
/// edited) is returned without its body rather than hiding the row; a malformed one without
/// its body and with its fault.
fn stored_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Cursor, StoredEvent)> {
    let cursor = Cursor {
        row: row.get(0)?,
        time_unix_nano: uint(row.get(1)?),
    };
    let bytes = row.get_ref(6)?.as_blob()?;
    let (host, seq): (String, u64) = (row.get(2)?, uint(row.get(4)?));
    let (event, malformed) = if row.get_ref(8)?.as_str()? == Kind::Malformed.name() {
        let fault = verifier::columns::derive(&host, seq, bytes)
            .ok()
            .and_then(|d| d.fault);
        (None, fault.unwrap_or_else(|| Kind::Malformed.name().into()))
    } else {
        (Event::decode(bytes).ok(), String::new())
    };
    Ok((
        cursor,
        StoredEvent {
            host,
            chain_id: row.get(3)?,
            seq,
            session: row.get(5)?,
            event,
            hash: row.get(7)?,
            malformed,
        },
    ))
}

/// What a row is reckoned to take in a response before it is read, besides
/// `EVENT_FRAMING`: its stored bytes. SQLite reads a blob's length without reading the blob.
const ROW_BYTES: &str = "length(e.event) + length(e.hash) + octet_length(e.host) \
     + octet_length(e.session) + octet_length(c.chain_id)";

/// The events `conditions` selects (with `args`), in `order`, as much of them as `bound`
/// lets one read hold. Their sizes are reckoned first, without reading their bytes, then
/// the rows the page takes are read one at a time, and each is counted as it is encoded
/// (a malformed record is sent with its fault rather than its bytes): whatever plan SQLite
/// picks (a sort, say), no more than the page is ever held. Both reads see one snapshot.
pub(super) fn bounded(
    conn: &Connection,
    conditions: &str,
    mut args: Vec<Value>,
    order: &str,
    bound: Bound,
) -> rusqlite::Result<Page<Cursor>> {
    let tx = conn.unchecked_transaction()?;
    let which = format!(
        "SELECT e.id, {ROW_BYTES} FROM events e JOIN chains c ON c.id = e.chain \
         WHERE {conditions} ORDER BY {order} LIMIT ?"
    );
    // One row past the bound says whether there are more.
    args.push(Value::Integer(int(bound.rows.saturating_add(1) as u64)));
    let sizes = tx
        .prepare_cached(&which)?
        .query_map(params_from_iter(&args), |r| {
            let bytes = usize::try_from(r.get::<_, i64>(1)?).unwrap_or(usize::MAX);
            Ok((r.get::<_, i64>(0)?, bytes.saturating_add(EVENT_FRAMING)))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let taken = bound.take(sizes.iter().map(|(_, size)| *size));
    let mut by_row = tx.prepare_cached(&format!("{STORED_COLUMNS} e.id = ?1"))?;
    let (mut rows, mut bytes) = (Vec::with_capacity(taken), 0);
    for (row, _) in &sizes[..taken] {
        let (cursor, event) = by_row.query_row([row], stored_event)?;
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

pub(super) fn query_stored(
    conn: &Connection,
    sql: &str,
    args: &[Value],
) -> rusqlite::Result<Vec<(Cursor, StoredEvent)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    stmt.query_map(params_from_iter(args), stored_event)?
        .collect()
}
