//! What every part of the SQLite backend shares: binding arguments, and reading stored
//! events back.

use prost::Message as _;
use proto::v1::{Grant, StoredEvent};
use rusqlite::{
    Connection, params_from_iter,
    types::{Type, Value},
};

use crate::store::{
    Bound, Cursor, Page,
    sql::{Arg, Conditions, STORED_COLUMNS, StoredRow, page, uint},
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

/// The events `conditions` selects, in `order`, as much of them as `bound` lets one read
/// hold (`sql::page`), in one snapshot.
pub(super) fn bounded(
    conn: &Connection,
    conditions: Conditions,
    order: &str,
    bound: Bound,
) -> rusqlite::Result<Page<Cursor>> {
    let sizes = conditions.sizes(order, bound);
    let tx = conn.unchecked_transaction()?;
    let args: Vec<Value> = sizes.args.iter().map(value).collect();
    let sizes = tx
        .prepare_cached(&sizes.sql)?
        .query_map(params_from_iter(&args), |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(i64, i64)>>>()?;
    let mut by_id = tx.prepare_cached(&format!("{STORED_COLUMNS} e.id = ?1"))?;
    page(&sizes, bound, |row| by_id.query_row([row], stored_event))
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
