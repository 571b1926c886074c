//! What a Query request selects, parsed from its wire form: filters (collector.proto's
//! `Filter`) and page tokens.

use proto::{kind::Kind, session::Key, v1::Filter};

use crate::{
    error::QueryError,
    store::{Cursor, EventFilter, SessionMatch},
};

/// The filter a request's `Filter` means: kinds by `proto::kind` (so `tty` is both
/// directions), a session by its key or its bare audit session id.
pub(crate) fn event_filter(filter: Option<Filter>) -> Result<EventFilter, QueryError> {
    let f = filter.unwrap_or_default();
    let some = |s: String| (!s.is_empty()).then_some(s);
    let session = match some(f.session) {
        None => None,
        Some(session) => Some(if let Ok(key) = session.parse::<Key>() {
            SessionMatch::Key(key.to_string())
        } else if let Ok(id) = session.parse() {
            SessionMatch::Id(id)
        } else {
            return Err(QueryError::Invalid(format!(
                "session {session:?} is neither a session key (HOST:SESSIONID:ROOT_START) nor an audit session id"
            )));
        }),
    };
    let mut kinds = Vec::new();
    for word in &f.kinds {
        for kind in Kind::parse_filter(word).map_err(|e| QueryError::Invalid(e.to_string()))? {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
    }
    Ok(EventFilter {
        host: some(f.host),
        identity: some(f.identity),
        session,
        kinds,
        ..EventFilter::default()
    })
}

/// Page tokens are `TIME.ROW` of the last event returned; clients treat them as opaque.
pub(crate) fn page_token(cursor: Cursor) -> String {
    format!("{}.{}", cursor.time_unix_nano, cursor.row)
}

/// The cursor a `page_token` resumes after; the start for an empty one.
pub(crate) fn parse_token(token: &str) -> Result<Cursor, QueryError> {
    if token.is_empty() {
        return Ok(Cursor::default());
    }
    token
        .split_once('.')
        .and_then(|(t, r)| {
            Some(Cursor {
                time_unix_nano: t.parse().ok()?,
                row: r.parse().ok()?,
            })
        })
        .ok_or_else(|| QueryError::Invalid(format!("page_token {token:?} is not one of ours")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(words: &[&str]) -> Result<Vec<Kind>, QueryError> {
        event_filter(Some(Filter {
            kinds: words.iter().map(|w| (*w).to_owned()).collect(),
            ..Filter::default()
        }))
        .map(|f| f.kinds)
    }

    #[test]
    fn tty_selects_both_directions_and_kinds_are_proto_names() {
        assert_eq!(kinds(&["tty"]).unwrap(), [Kind::TtyOut, Kind::TtyIn]);
        assert_eq!(
            kinds(&["tty_in", "tty", "exec"]).unwrap(),
            [Kind::TtyIn, Kind::TtyOut, Kind::Exec],
            "each kind once"
        );
        assert_eq!(kinds(&["tty_out"]).unwrap(), [Kind::TtyOut]);
        assert!(kinds(&[]).unwrap().is_empty(), "no kinds: every kind");
        let QueryError::Invalid(e) = kinds(&["exec", "ttyy"]).unwrap_err() else {
            panic!("an unknown kind is invalid")
        };
        assert!(e.contains("\"ttyy\"") && e.contains("tty_out"), "{e}");
    }

    #[test]
    fn a_session_is_a_key_or_an_audit_session_id() {
        let session = |s: &str| {
            event_filter(Some(Filter {
                session: s.into(),
                ..Filter::default()
            }))
            .map(|f| f.session)
        };
        assert!(matches!(session("h:1:7:99"), Ok(Some(SessionMatch::Key(k))) if k == "h:1:7:99"));
        assert!(matches!(session("7"), Ok(Some(SessionMatch::Id(7)))));
        assert!(matches!(session(""), Ok(None)));
        for bad in ["h:x:9", "seven"] {
            assert!(matches!(session(bad), Err(QueryError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn page_tokens_round_trip() {
        let cursor = Cursor {
            time_unix_nano: 5,
            row: 9,
        };
        assert_eq!(parse_token(&page_token(cursor)).unwrap(), cursor);
        assert_eq!(parse_token("").unwrap(), Cursor::default());
        assert!(parse_token("x").is_err());
    }
}
