//! What every part of the SQLite backend shares: binding arguments, and reading stored
//! events back.

use prost::Message as _;
use proto::v1::{Grant, StoredEvent};
use rusqlite::{
    Connection, params_from_iter,
    types::{Type, Value},
};

use crate::store::{
    Bound, Cursor, EVENT_FRAMING, Page,
    sql::{Arg, Conditions, ROW_BYTES, STORED_COLUMNS, StoredRow, int, uint},
};

pub(super) fn decode_grant(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Grant> {
    Grant::decode(row.get_ref(column)?.as_blob()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Blob, Box::new(e)))
}

pub(super) fn value(arg: &Arg) -> Value {
    match arg {
        Arg::Text(t) => Value::Text(t.clone()),
        Arg::Int(i) => Value::Integer(*i),
    }
}

/// Reads a row of `STORED_COLUMNS`.
fn stored_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Cursor, StoredEvent)> {
    let cursor = Cursor {
        row: row.get(0)?,
        time_unix_nano: uint(row.get(1)?),
    };
    let stored = StoredRow {
        host: row.get(2)?,
        chain_id: row.get(3)?,
        seq: uint(row.get(4)?),
        session: row.get(5)?,
        event: row.get_ref(6)?.as_blob()?,
        hash: row.get(7)?,
        kind: row.get_ref(8)?.as_str()?,
    };
    Ok((cursor, stored.into_stored()))
}

/// The events `conditions` selects, in `order`, as much of them as `bound`
/// lets one read hold. Their sizes are reckoned first, without reading their bytes, then
/// the rows the page takes are read one at a time, and each is counted as it is encoded
/// (a malformed record is sent with its fault rather than its bytes): whatever plan SQLite
/// picks (a sort, say), no more than the page is ever held. Both reads see one snapshot.
pub(super) fn bounded(
    conn: &Connection,
    conditions: &Conditions,
    order: &str,
    bound: Bound,
) -> rusqlite::Result<Page<Cursor>> {
    let tx = conn.unchecked_transaction()?;
    let which = format!(
        "SELECT e.id, {ROW_BYTES} FROM events e JOIN chains c ON c.id = e.chain \
         WHERE {} ORDER BY {order} LIMIT ?",
        conditions.sql
    );
    let mut args: Vec<Value> = conditions.args.iter().map(value).collect();
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
