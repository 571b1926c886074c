//! Sessions as the store summarizes them: each session's columns aggregated, its terminals,
//! and the bytes of the few events the query layer decodes.

use std::ops::ControlFlow;

use proto::kind::Kind;
use rusqlite::{Connection, OptionalExtension as _, params, params_from_iter, types::Value};

use crate::store::sql::{int, uint};
use crate::store::{Cursor, SessionQuery, SessionRow, TerminalRow};

/// Hands `each` the sessions `query` selects, with their terminals, until it breaks; read
/// in one transaction, so the terminals are those of the sessions as read. The page's
/// sessions are found from their columns alone; the bytes of their first events are read
/// for one session at a time, as it is handed over.
pub(super) fn sessions(
    conn: &Connection,
    query: &SessionQuery,
    each: &mut dyn FnMut(SessionRow) -> ControlFlow<()>,
) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    for mut session in session_rows(&tx, query)? {
        (session.first_event, session.login_tty) = first_of(&tx, &session.key)?;
        session.terminals = terminal_rows(&tx, &session.key, query.since_unix_nano)?;
        if each(session).is_break() {
            break;
        }
    }
    tx.commit()
}

/// The conditions `query` puts on the events of the sessions it selects, and their
/// arguments.
fn session_sql(query: &SessionQuery) -> (String, Vec<Value>) {
    let mut sql = String::from("e.session != '' AND e.time >= ?");
    let mut args = vec![Value::Integer(int(query.since_unix_nano))];
    if !query.host.is_empty() {
        sql.push_str(" AND e.host = ?");
        args.push(Value::Text(query.host.clone()));
    }
    if let Some(key) = &query.key {
        sql.push_str(" AND e.session = ?");
        args.push(Value::Text(key.clone()));
    }
    (sql, args)
}

/// The page of sessions `query` selects, their columns aggregated in one pass over their
/// events' columns: no event's bytes are read, whatever the number of sessions in the
/// window.
fn session_rows(conn: &Connection, query: &SessionQuery) -> rusqlite::Result<Vec<SessionRow>> {
    let (conditions, mut args) = session_sql(query);
    let sql = format!(
        "SELECT e.session, e.host, MIN(e.time), MAX(e.time), COUNT(*), SUM(e.kind = '{exec}'), \
         SUM(e.tty_bytes), MIN(e.id), SUM(e.kind = '{kill}') \
         FROM events e WHERE {conditions} GROUP BY e.session \
         HAVING MIN(e.time) > ? OR (MIN(e.time) = ? AND MIN(e.id) > ?) \
         ORDER BY MIN(e.time), MIN(e.id) LIMIT ?",
        exec = Kind::Exec.name(),
        kill = Kind::Kill.name(),
    );
    let time = Value::Integer(int(query.after.time_unix_nano));
    args.extend([
        time.clone(),
        time,
        Value::Integer(query.after.row),
        Value::Integer(int(query.limit as u64)),
    ]);
    conn.prepare_cached(&sql)?
        .query_map(params_from_iter(&args), |r| {
            Ok(SessionRow {
                key: r.get(0)?,
                host: r.get(1)?,
                cursor: Cursor {
                    time_unix_nano: uint(r.get(2)?),
                    row: r.get(7)?,
                },
                first_unix_nano: uint(r.get(2)?),
                last_unix_nano: uint(r.get(3)?),
                events: uint(r.get(4)?),
                execs: uint(r.get(5)?),
                tty_bytes: uint(r.get(6)?),
                kills: uint(r.get(8)?),
                ..SessionRow::default()
            })
        })?
        .collect()
}

/// The bytes of the session's first event, and the terminal of its first event that has
/// one, whatever the window: they name the session itself. (Each lookup says
/// `session != ''` so that SQLite may use the partial index `events_session`; without it
/// every lookup scanned the whole table.)
fn first_of(conn: &Connection, key: &str) -> rusqlite::Result<(Vec<u8>, String)> {
    let event = conn
        .prepare_cached(
            "SELECT event FROM events WHERE session = ?1 AND session != '' \
             ORDER BY time, id LIMIT 1",
        )?
        .query_row([key], |r| r.get(0))
        .optional()?;
    let tty = conn
        .prepare_cached(
            "SELECT tty FROM events WHERE session = ?1 AND session != '' AND tty != '' \
             ORDER BY time, id LIMIT 1",
        )?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok((event.unwrap_or_default(), tty.unwrap_or_default()))
}

/// The session's terminals by first use: one pass over its tty events' columns from
/// `since` on, and for each terminal typed into one lookup of its first input.
fn terminal_rows(conn: &Connection, key: &str, since: u64) -> rusqlite::Result<Vec<TerminalRow>> {
    let sql = format!(
        "SELECT e.tty, MIN(e.time), MAX(e.time), \
         SUM(CASE WHEN e.kind = '{out}' THEN e.tty_bytes ELSE 0 END), \
         SUM(CASE WHEN e.kind = '{input}' THEN e.tty_bytes ELSE 0 END), \
         CASE WHEN SUM(e.kind = '{input}') > 0 THEN \
           (SELECT f.event FROM events f WHERE f.session = e.session AND f.session != '' \
            AND f.tty = e.tty AND f.kind = '{input}' AND f.time >= ?2 \
            ORDER BY f.time, f.id LIMIT 1) END \
         FROM events e WHERE e.session = ?1 AND e.session != '' AND e.time >= ?2 \
         AND e.tty != '' AND e.kind IN ('{out}', '{input}') \
         GROUP BY e.tty ORDER BY MIN(e.time), MIN(e.id)",
        out = Kind::TtyOut.name(),
        input = Kind::TtyIn.name(),
    );
    conn.prepare_cached(&sql)?
        .query_map(params![key, int(since)], |r| {
            Ok(TerminalRow {
                device: r.get(0)?,
                first_unix_nano: uint(r.get(1)?),
                last_unix_nano: uint(r.get(2)?),
                output_bytes: uint(r.get(3)?),
                input_bytes: uint(r.get(4)?),
                first_input: r.get(5)?,
            })
        })?
        .collect()
}
