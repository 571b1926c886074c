//! Sessions and what Replay plays of one. A session is assembled from the store's columns
//! with a few targeted decodes (its first event, and each terminal's first input), never by
//! decoding all its events; Replay picks the terminals it plays from the same summary.

use std::ops::ControlFlow;

use prost::Message as _;
use proto::{
    kind::Kind,
    session::Key,
    v1::{Event, ReplayRequest, Session, Terminal},
};

use crate::{
    error::QueryError,
    store::{
        Bound, Cursor, EventFilter, SessionMatch, SessionQuery, SessionRow, Store, StoreError,
        TerminalRow,
    },
};

/// One page of Sessions: the sessions, and where the next page starts when there is one.
pub(crate) struct SessionsPage {
    pub sessions: Vec<Session>,
    pub next: Option<Cursor>,
}

/// The sessions with events from `since_unix_nano` on, of `host` (empty: every host), after
/// `after`, as many as `bound` lets one response carry, counted as they are encoded in it.
/// Each row's bytes are dropped once it is decoded.
pub(crate) fn sessions(
    store: &dyn Store,
    host: String,
    since_unix_nano: u64,
    after: Cursor,
    bound: Bound,
) -> Result<SessionsPage, StoreError> {
    let query = SessionQuery {
        host,
        key: None,
        since_unix_nano,
        after,
        // One past the bound says whether there are more.
        limit: bound.rows.saturating_add(1),
    };
    let (mut sessions, mut bytes, mut last, mut more) = (Vec::new(), 0, after, false);
    store.sessions(&query, &mut |row| {
        let cursor = row.cursor;
        let session = session(row);
        let size = prost::encoding::message::encoded_len(1, &session);
        if !bound.admits(sessions.len(), bytes, size) {
            more = true;
            return ControlFlow::Break(());
        }
        (bytes, last) = (bytes + size, cursor);
        sessions.push(session);
        ControlFlow::Continue(())
    })?;
    Ok(SessionsPage {
        sessions,
        next: more.then_some(last),
    })
}

/// A session as Sessions lists it. Its root and identity are those of its first event; its
/// id and root start are spelled in its key.
fn session(row: SessionRow) -> Session {
    let key = row.key.parse::<Key>().ok();
    let first = Event::decode(row.first_event.as_slice()).unwrap_or_default();
    let terminals = terminals(row.terminals, &row.login_tty)
        .into_iter()
        .map(terminal)
        .collect();
    Session {
        sessionid: key.as_ref().map_or(0, |k| k.sessionid),
        root_start_unix_nano: key.as_ref().map_or(0, |k| k.start_unix_nano),
        key: row.key,
        host: row.host,
        root_pid: first.session_root.map_or(0, |s| s.pid),
        identity: Some(first.identity.unwrap_or_default()),
        first_unix_nano: row.first_unix_nano,
        last_unix_nano: row.last_unix_nano,
        events: row.events,
        execs: row.execs,
        tty_bytes: row.tty_bytes,
        kills: row.kills,
        login_tty: row.login_tty,
        terminals,
    }
}

/// The terminals in the order a session lists them: the login terminal first, then by first
/// use (the store's order).
fn terminals(mut rows: Vec<TerminalRow>, login_tty: &str) -> Vec<TerminalRow> {
    if let Some(login) = rows.iter().position(|t| t.device == login_tty) {
        let login = rows.remove(login);
        rows.insert(0, login);
    }
    rows
}

/// A terminal as Sessions lists it: who holds its master side is the process of its first
/// input.
fn terminal(row: TerminalRow) -> Terminal {
    let opener = row
        .first_input
        .and_then(|bytes| Event::decode(bytes.as_slice()).ok())
        .and_then(|e| e.process)
        .unwrap_or_default();
    Terminal {
        device: row.device,
        first_unix_nano: row.first_unix_nano,
        last_unix_nano: row.last_unix_nano,
        output_bytes: row.output_bytes,
        input_bytes: row.input_bytes,
        opened_by_pid: opener.pid,
        opened_by_comm: opener.comm,
    }
}

/// The events Replay plays, in turn, each oldest first: the session's output (and input,
/// when asked) on the terminal asked for, on its login terminal when none is, or on all of
/// them; then the kills filed under the session, which name no terminal and end what they
/// kill. One request, so one access record, says both.
pub(crate) fn replay_filters(
    store: &dyn Store,
    request: ReplayRequest,
) -> Result<[EventFilter; 2], QueryError> {
    let key = request
        .session
        .parse::<Key>()
        .map_err(|e| QueryError::Invalid(e.to_string()))?
        .to_string();
    let tty = if request.all_ttys {
        None
    } else {
        let query = SessionQuery {
            key: Some(key.clone()),
            limit: 1,
            ..SessionQuery::default()
        };
        let mut row = SessionRow::default();
        store.sessions(&query, &mut |found| {
            row = found;
            ControlFlow::Break(())
        })?;
        if request.tty.is_empty() {
            Some(row.login_tty)
        } else if row.terminals.iter().any(|t| t.device == request.tty) {
            Some(request.tty)
        } else {
            let used: Vec<String> = terminals(row.terminals, &row.login_tty)
                .into_iter()
                .map(|t| t.device)
                .collect();
            let used = if used.is_empty() {
                "it used none".to_owned()
            } else {
                format!("its terminals are {}", used.join(", "))
            };
            return Err(QueryError::NotFound(format!(
                "session {key} never used terminal {:?}: {used}",
                request.tty
            )));
        }
    };
    // Window sizes too: a replay lays the output out by them.
    let mut kinds = vec![Kind::TtyOut, Kind::TtyResize];
    if request.input {
        kinds.push(Kind::TtyIn);
    }
    let kills = EventFilter {
        session: Some(SessionMatch::Key(key.clone())),
        kinds: vec![Kind::Kill],
        ..EventFilter::default()
    };
    let terminal = EventFilter {
        session: Some(SessionMatch::Key(key)),
        kinds,
        tty,
        ..EventFilter::default()
    };
    Ok([terminal, kills])
}

#[cfg(test)]
mod tests {
    use proto::v1::{
        Exec, Identity, Kill, Process, SessionRoot, StoredEvent, Tty, event::Body, tty::Direction,
    };

    use super::*;
    use crate::{
        store::{Bound, Cursor},
        testing::{self, TestStore},
    };

    const KEY: &str = "h:7:100";

    fn process(pid: u32, comm: &str, tty: &str) -> Process {
        Process {
            pid,
            tgid: pid,
            sessionid: Some(7),
            tty: tty.into(),
            comm: comm.into(),
            ..Process::default()
        }
    }

    fn event(time: u64, process: Process, body: Body) -> Event {
        Event {
            time_unix_nano: time,
            process: Some(process),
            identity: Some(Identity {
                name: "alice".into(),
                ..Identity::default()
            }),
            session_root: Some(SessionRoot {
                pid: 400,
                start_unix_nano: 100,
            }),
            body: Some(body),
        }
    }

    fn exec(time: u64, process: Process) -> Event {
        event(time, process, Body::Exec(Exec::default()))
    }

    fn tty(time: u64, process: Process, direction: Direction, device: &str, data: &str) -> Event {
        event(
            time,
            process,
            Body::Tty(Tty {
                direction: direction.into(),
                device: device.into(),
                data: bytes::Bytes::copy_from_slice(data.as_bytes()),
                ..Tty::default()
            }),
        )
    }

    /// A login on 136:0 that runs sudo, which runs its command in a pty of its own (136:1),
    /// as Debian's `use_pty` does, and relays that output to the login terminal; later a
    /// `script` on 136:2 that nobody types into. The inner terminal is written first.
    fn sudo_session() -> TestStore {
        use Direction::{Input, Output};
        let bash = || process(500, "bash", "136:0");
        let sshd = process(400, "sshd", "");
        let sudo = process(600, "sudo", "136:0");
        let root = || process(700, "bash", "136:1");
        let store = testing::store();
        store.ingest(
            "h:boot:1",
            "h",
            &[
                exec(10, bash()),
                tty(20, root(), Output, "136:1", "root# "),
                tty(30, sshd.clone(), Input, "136:0", "sudo -i\r"),
                tty(40, bash(), Output, "136:0", "sudo -i\r\n"),
                exec(50, sudo.clone()),
                tty(60, sudo.clone(), Input, "136:1", "ls\r"),
                tty(70, root(), Output, "136:1", "ls\r\nfile\r\n"),
                tty(80, sudo, Output, "136:0", "root# ls\r\nfile\r\n"),
                tty(90, sshd, Input, "136:0", "x"),
                tty(95, process(800, "script", "136:2"), Output, "136:2", "log"),
            ],
        );
        store
    }

    #[test]
    fn a_session_lists_its_login_terminal_first_then_each_terminal_by_first_use() {
        let store = sudo_session();
        let listed = sessions_since(&store, 0);
        assert_eq!(listed.len(), 1, "{listed:?}");
        let s = &listed[0];
        assert_eq!(
            (
                s.key.as_str(),
                s.sessionid,
                s.root_start_unix_nano,
                s.root_pid
            ),
            (KEY, 7, 100, 400)
        );
        assert_eq!(s.identity.as_ref().unwrap().name, "alice");
        assert_eq!((s.first_unix_nano, s.last_unix_nano), (10, 95));
        assert_eq!((s.events, s.execs), (10, 2));
        assert_eq!(s.login_tty, "136:0");
        let terminal = |device: &str, first, last, output, input, pid, comm: &str| Terminal {
            device: device.into(),
            first_unix_nano: first,
            last_unix_nano: last,
            output_bytes: output,
            input_bytes: input,
            opened_by_pid: pid,
            opened_by_comm: comm.into(),
        };
        assert_eq!(
            s.terminals,
            [
                terminal("136:0", 30, 90, 9 + 16, 8 + 1, 400, "sshd"),
                terminal("136:1", 20, 70, 6 + 10, 3, 600, "sudo"),
                terminal("136:2", 95, 95, 3, 0, 0, ""),
            ]
        );
        assert!(
            sessions_since(&store, 85)[0].terminals.len() == 2,
            "a window counts its own"
        );
        assert!(list(&store, "other", 0).is_empty());
    }

    /// Sessions 1 to 5, one exec each, in that order.
    fn five_sessions() -> TestStore {
        let store = testing::store();
        let events: Vec<Event> = (1..=5u32)
            .map(|id| Event {
                session_root: Some(SessionRoot {
                    pid: id,
                    start_unix_nano: 100,
                }),
                ..exec(
                    10 * u64::from(id),
                    Process {
                        sessionid: Some(id),
                        ..process(id, "bash", "136:0")
                    },
                )
            })
            .collect();
        store.ingest("h:boot:1", "h", &events);
        store
    }

    /// Pages of `store`'s sessions under `bound`, from the first: the session ids of each.
    fn pages(store: &TestStore, bound: Bound) -> Vec<Vec<u32>> {
        let (mut pages, mut after) = (Vec::new(), Cursor::default());
        loop {
            let page = sessions(&store.store, String::new(), 0, after, bound).unwrap();
            pages.push(page.sessions.iter().map(|s| s.sessionid).collect());
            match page.next {
                Some(next) => after = next,
                None => return pages,
            }
        }
    }

    /// A page ends at its rows or before the session that would take it past its bytes, as
    /// encoded in the response, but holds one at least; the next page follows on.
    #[test]
    fn pages_of_sessions_end_at_their_rows_or_bytes_and_follow_on() {
        let rows = |rows| Bound {
            rows,
            bytes: usize::MAX,
        };
        let store = five_sessions();
        assert_eq!(pages(&store, rows(100)), [vec![1, 2, 3, 4, 5]]);
        assert_eq!(pages(&store, rows(3)), [vec![1, 2, 3], vec![4, 5]]);
        // Each of them encodes to as many bytes.
        let one = prost::encoding::message::encoded_len(1, &list(&store, "", 0)[0]);
        let bytes = |bytes| Bound { rows: 100, bytes };
        assert_eq!(
            pages(&store, bytes(2 * one)),
            [vec![1, 2], vec![3, 4], vec![5]]
        );
        assert_eq!(
            pages(&store, bytes(2 * one - 1)),
            [[1], [2], [3], [4], [5]],
            "one a page when two are over the bound"
        );
        assert_eq!(pages(&store, bytes(1)), [[1], [2], [3], [4], [5]]);
    }

    fn sessions_since(store: &TestStore, since: u64) -> Vec<Session> {
        list(store, "", since)
    }

    /// Every session of `host` from `since` on, in one page.
    fn list(store: &TestStore, host: &str, since: u64) -> Vec<Session> {
        let bound = Bound {
            rows: 100,
            bytes: usize::MAX,
        };
        let page = sessions(&store.store, host.into(), since, Cursor::default(), bound).unwrap();
        assert!(page.next.is_none());
        page.sessions
    }

    /// What Replay plays for `request`: each event's data, oldest first.
    fn replay(store: &TestStore, request: ReplayRequest) -> Result<Vec<String>, QueryError> {
        let bound = Bound {
            rows: 100,
            bytes: usize::MAX,
        };
        let mut events: Vec<StoredEvent> = Vec::new();
        for filter in replay_filters(&store.store, request)? {
            let found = store.store.search(&filter, Cursor::default(), bound);
            events.extend(found.unwrap().rows.into_iter().map(|(_, e)| e));
        }
        Ok(events
            .into_iter()
            .map(|e| match e.event.unwrap().body {
                Some(Body::Tty(t)) => String::from_utf8(t.data.to_vec()).unwrap(),
                Some(Body::Kill(k)) => format!("kill {}", k.grant_id),
                other => panic!("replayed {other:?}"),
            })
            .collect())
    }

    fn request(tty: &str, all_ttys: bool, input: bool) -> ReplayRequest {
        ReplayRequest {
            session: KEY.into(),
            tty: tty.into(),
            all_ttys,
            input,
        }
    }

    #[test]
    fn replay_plays_the_login_terminal_one_terminal_or_all() {
        let store = sudo_session();
        assert_eq!(
            replay(&store, request("", false, false)).unwrap(),
            ["sudo -i\r\n", "root# ls\r\nfile\r\n"],
            "the login terminal: each line once"
        );
        assert_eq!(
            replay(&store, request("136:1", false, false)).unwrap(),
            ["root# ", "ls\r\nfile\r\n"]
        );
        assert_eq!(
            replay(&store, request("136:1", false, true)).unwrap(),
            ["root# ", "ls\r", "ls\r\nfile\r\n"],
            "with what was typed"
        );
        assert_eq!(
            replay(&store, request("136:5", true, false)).unwrap(),
            [
                "root# ",
                "sudo -i\r\n",
                "ls\r\nfile\r\n",
                "root# ls\r\nfile\r\n",
                "log"
            ],
            "every terminal, interleaved in time; tty ignored"
        );
        assert_eq!(
            replay(&store, request("", true, true)).unwrap().len(),
            10 - 2,
            "every tty event"
        );
    }

    /// The sudo session, killed at a time before its last output, and another session's
    /// kill.
    fn killed_session() -> TestStore {
        let store = sudo_session();
        let kill = |time, sessionid| Event {
            process: None,
            body: Some(Body::Kill(Kill {
                grant_id: format!("g-{sessionid}"),
                sessionid: Some(sessionid),
                ..Kill::default()
            })),
            ..exec(time, process(0, "", ""))
        };
        // Another session's kill, and one of this session stored before its last output.
        store.ingest("h:boot:2", "h", &[kill(85, 8), kill(86, 7)]);
        store
    }

    #[test]
    fn a_session_counts_the_kills_filed_under_it() {
        let store = killed_session();
        let listed = sessions_since(&store, 0);
        let kills: Vec<(&str, u64, u64)> = listed
            .iter()
            .map(|s| (s.key.as_str(), s.events, s.kills))
            .collect();
        assert_eq!(kills, [(KEY, 11, 1), ("h:8:100", 1, 1)]);
        assert_eq!(
            sessions_since(&store, 87)[0].kills,
            0,
            "a window counts its own"
        );
    }

    #[test]
    fn replay_ends_with_the_kills_filed_under_the_session_whatever_the_terminal() {
        let store = killed_session();
        assert_eq!(
            replay(&store, request("", false, false)).unwrap(),
            ["sudo -i\r\n", "root# ls\r\nfile\r\n", "kill g-7"],
        );
        assert_eq!(
            replay(&store, request("136:1", false, false)).unwrap(),
            ["root# ", "ls\r\nfile\r\n", "kill g-7"]
        );
        assert_eq!(
            replay(&store, request("", true, true))
                .unwrap()
                .last()
                .unwrap(),
            "kill g-7"
        );
    }

    #[test]
    fn replay_refuses_a_bad_key_and_a_terminal_the_session_never_used() {
        let store = sudo_session();
        let Err(QueryError::Invalid(why)) = replay(
            &store,
            ReplayRequest {
                session: "h:7".into(),
                ..ReplayRequest::default()
            },
        ) else {
            panic!("a bad key was replayed")
        };
        assert_eq!(why, "h:7".parse::<Key>().unwrap_err().to_string());
        let Err(QueryError::NotFound(why)) = replay(&store, request("136:9", false, false)) else {
            panic!("an unused terminal was replayed")
        };
        assert_eq!(
            why,
            "session h:7:100 never used terminal \"136:9\": its terminals are 136:0, 136:1, 136:2"
        );
        let unknown = ReplayRequest {
            session: "h:8:100".into(),
            ..ReplayRequest::default()
        };
        assert_eq!(replay(&store, unknown).unwrap(), Vec::<String>::new());
    }
}
