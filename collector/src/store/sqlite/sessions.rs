//! Sessions as the store summarizes them: each session's columns aggregated, its terminals,
//! and the bytes of the few events the query layer decodes.

use std::collections::HashMap;

use proto::kind::Kind;
use rusqlite::{Connection, params_from_iter, types::Value};

use super::sql::{int, uint};
use crate::store::{SessionQuery, SessionRow, TerminalRow};

/// The sessions `query` selects, with their terminals, read in one transaction so the
/// terminals are those of the sessions as read.
pub(super) fn sessions(
    conn: &Connection,
    query: &SessionQuery,
) -> rusqlite::Result<Vec<SessionRow>> {
    let tx = conn.unchecked_transaction()?;
    let mut sessions = session_rows(&tx, query)?;
    let mut terminals: HashMap<String, Vec<TerminalRow>> = HashMap::new();
    for (session, terminal) in terminal_rows(&tx, query)? {
        terminals.entry(session).or_default().push(terminal);
    }
    tx.commit()?;
    for session in &mut sessions {
        session.terminals = terminals.remove(&session.key).unwrap_or_default();
    }
    Ok(sessions)
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

/// The sessions' columns, aggregated: one pass over their events' columns, and for each
/// session two lookups of its first events, stopping at the first match. (Each lookup says
/// `f.session != ''` so that SQLite may use the partial index `events_session`; without it
/// every lookup scanned the whole table.)
fn session_rows(conn: &Connection, query: &SessionQuery) -> rusqlite::Result<Vec<SessionRow>> {
    let (conditions, args) = session_sql(query);
    let sql = format!(
        "SELECT e.session, e.host, MIN(e.time), MAX(e.time), COUNT(*), SUM(e.kind = '{exec}'), \
         SUM(e.tty_bytes), \
         (SELECT f.event FROM events f WHERE f.session = e.session AND f.session != '' \
          ORDER BY f.time, f.id LIMIT 1), \
         (SELECT f.tty FROM events f WHERE f.session = e.session AND f.session != '' \
          AND f.tty != '' ORDER BY f.time, f.id LIMIT 1) \
         FROM events e WHERE {conditions} GROUP BY e.session ORDER BY MIN(e.time), MIN(e.id)",
        exec = Kind::Exec.name(),
    );
    conn.prepare_cached(&sql)?
        .query_map(params_from_iter(&args), |r| {
            Ok(SessionRow {
                key: r.get(0)?,
                host: r.get(1)?,
                first_unix_nano: uint(r.get(2)?),
                last_unix_nano: uint(r.get(3)?),
                events: uint(r.get(4)?),
                execs: uint(r.get(5)?),
                tty_bytes: uint(r.get(6)?),
                first_event: r.get(7)?,
                login_tty: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                terminals: Vec::new(),
            })
        })?
        .collect()
}

/// The sessions' terminals, each session's by first use: one pass over their tty events'
/// columns, and for each terminal typed into one lookup of its first input.
fn terminal_rows(
    conn: &Connection,
    query: &SessionQuery,
) -> rusqlite::Result<Vec<(String, TerminalRow)>> {
    let (conditions, mut args) = session_sql(query);
    let sql = format!(
        "SELECT e.session, e.tty, MIN(e.time), MAX(e.time), \
         SUM(CASE WHEN e.kind = '{out}' THEN e.tty_bytes ELSE 0 END), \
         SUM(CASE WHEN e.kind = '{input}' THEN e.tty_bytes ELSE 0 END), \
         CASE WHEN SUM(e.kind = '{input}') > 0 THEN \
           (SELECT f.event FROM events f WHERE f.session = e.session AND f.session != '' \
            AND f.tty = e.tty AND f.kind = '{input}' AND f.time >= ? \
            ORDER BY f.time, f.id LIMIT 1) END \
         FROM events e WHERE {conditions} AND e.tty != '' AND e.kind IN ('{out}', '{input}') \
         GROUP BY e.session, e.tty ORDER BY MIN(e.time), MIN(e.id)",
        out = Kind::TtyOut.name(),
        input = Kind::TtyIn.name(),
    );
    // The lookup's `since` comes first in the statement.
    args.insert(0, Value::Integer(int(query.since_unix_nano)));
    conn.prepare_cached(&sql)?
        .query_map(params_from_iter(&args), |r| {
            Ok((
                r.get(0)?,
                TerminalRow {
                    device: r.get(1)?,
                    first_unix_nano: uint(r.get(2)?),
                    last_unix_nano: uint(r.get(3)?),
                    output_bytes: uint(r.get(4)?),
                    input_bytes: uint(r.get(5)?),
                    first_input: r.get(6)?,
                },
            ))
        })?
        .collect()
}
