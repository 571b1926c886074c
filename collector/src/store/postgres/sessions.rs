//! Sessions as the PostgreSQL backend summarizes them: the same reads as the SQLite
//! backend's (`store::sqlite::sessions`), in PostgreSQL's SQL.

use std::ops::ControlFlow;

use postgres::Transaction;
use proto::kind::Kind;

use super::bind::params;
use crate::store::{
    Cursor, SessionQuery, SessionRow, StoreError, TerminalRow,
    sql::{Arg, Conditions, Dialect, int, uint},
};

/// Hands `each` the sessions `query` selects, with their terminals, until it breaks; read
/// in the caller's snapshot, so the terminals are those of the sessions as read.
pub(super) fn sessions(
    tx: &mut Transaction<'_>,
    query: &SessionQuery,
    each: &mut dyn FnMut(SessionRow) -> ControlFlow<()>,
) -> Result<(), StoreError> {
    for mut session in session_rows(tx, query)? {
        (session.first_event, session.login_tty) = first_of(tx, &session.key)?;
        session.terminals = terminal_rows(tx, &session.key, query.since_unix_nano)?;
        if each(session).is_break() {
            break;
        }
    }
    Ok(())
}

/// The page of sessions `query` selects, their columns aggregated in one pass over their
/// events' columns.
fn session_rows(
    tx: &mut Transaction<'_>,
    query: &SessionQuery,
) -> Result<Vec<SessionRow>, StoreError> {
    let mut c = Conditions::new(Dialect::Postgres);
    c.push(
        "e.session != '' AND e.time >= {}",
        [Arg::Int(int(query.since_unix_nano))],
    );
    if !query.host.is_empty() {
        c.push(" AND e.host = {}", [Arg::Text(query.host.clone())]);
    }
    if let Some(key) = &query.key {
        c.push(" AND e.session = {}", [Arg::Text(key.clone())]);
    }
    let conditions = std::mem::take(&mut c.sql);
    let time = Arg::Int(int(query.after.time_unix_nano));
    c.push(
        "HAVING MIN(e.time) > {} OR (MIN(e.time) = {} AND MIN(e.id) > {}) \
         ORDER BY MIN(e.time), MIN(e.id) LIMIT {}",
        [
            time.clone(),
            time,
            Arg::Int(query.after.row),
            Arg::Int(int(query.limit as u64)),
        ],
    );
    // A session's key names its host, so every event of a group has the same one.
    let sql = format!(
        "SELECT e.session, MIN(e.host), MIN(e.time), MAX(e.time), COUNT(*), \
         COUNT(*) FILTER (WHERE e.kind = '{exec}'), SUM(e.tty_bytes)::BIGINT, MIN(e.id), \
         COUNT(*) FILTER (WHERE e.kind = '{kill}') \
         FROM events e WHERE {conditions} GROUP BY e.session {}",
        c.sql,
        exec = Kind::Exec.name(),
        kill = Kind::Kill.name(),
    );
    let rows = tx.query(&sql, &params(&c.args))?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(SessionRow {
                key: r.try_get(0)?,
                host: r.try_get(1)?,
                cursor: Cursor {
                    time_unix_nano: uint(r.try_get(2)?),
                    row: r.try_get(7)?,
                },
                first_unix_nano: uint(r.try_get(2)?),
                last_unix_nano: uint(r.try_get(3)?),
                events: uint(r.try_get(4)?),
                execs: uint(r.try_get(5)?),
                tty_bytes: uint(r.try_get(6)?),
                kills: uint(r.try_get(8)?),
                ..SessionRow::default()
            })
        })
        .collect::<Result<_, postgres::Error>>()?)
}

/// The bytes of the session's first event, and the terminal of its first event that has
/// one, whatever the window: they name the session itself.
fn first_of(tx: &mut Transaction<'_>, key: &str) -> Result<(Vec<u8>, String), StoreError> {
    let event = tx
        .query_opt(
            "SELECT event FROM events WHERE session = $1 AND session != '' \
             ORDER BY time, id LIMIT 1",
            &[&key],
        )?
        .map(|r| r.get(0));
    let tty = tx
        .query_opt(
            "SELECT tty FROM events WHERE session = $1 AND session != '' AND tty != '' \
             ORDER BY time, id LIMIT 1",
            &[&key],
        )?
        .map(|r| r.get(0));
    Ok((event.unwrap_or_default(), tty.unwrap_or_default()))
}

/// The session's terminals by first use, each with the bytes of its first input.
fn terminal_rows(
    tx: &mut Transaction<'_>,
    key: &str,
    since: u64,
) -> Result<Vec<TerminalRow>, StoreError> {
    let sql = format!(
        "SELECT e.tty, MIN(e.time), MAX(e.time), \
         COALESCE(SUM(e.tty_bytes) FILTER (WHERE e.kind = '{out}'), 0)::BIGINT, \
         COALESCE(SUM(e.tty_bytes) FILTER (WHERE e.kind = '{input}'), 0)::BIGINT, \
         CASE WHEN COUNT(*) FILTER (WHERE e.kind = '{input}') > 0 THEN \
           (SELECT f.event FROM events f WHERE f.session = $1 AND f.session != '' \
            AND f.tty = e.tty AND f.kind = '{input}' AND f.time >= $2 \
            ORDER BY f.time, f.id LIMIT 1) END \
         FROM events e WHERE e.session = $1 AND e.session != '' AND e.time >= $2 \
         AND e.tty != '' AND e.kind IN ('{out}', '{input}') \
         GROUP BY e.tty ORDER BY MIN(e.time), MIN(e.id)",
        out = Kind::TtyOut.name(),
        input = Kind::TtyIn.name(),
    );
    let rows = tx.query(&sql, &[&key, &int(since)])?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(TerminalRow {
                device: r.try_get(0)?,
                first_unix_nano: uint(r.try_get(1)?),
                last_unix_nano: uint(r.try_get(2)?),
                output_bytes: uint(r.try_get(3)?),
                input_bytes: uint(r.try_get(4)?),
                first_input: r.try_get(5)?,
            })
        })
        .collect::<Result<_, postgres::Error>>()?)
}
