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
    use proptest::prelude::*;

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

    /// A kind word: a kind's name, `tty`, or anything.
    fn kind_word() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(Kind::ALL.map(Kind::name).to_vec()).prop_map(str::to_owned),
            Just("tty".to_owned()),
            "\\PC{0,12}",
        ]
    }

    /// A session: none, shaped like a key or an audit session id (in range or not), or
    /// anything.
    fn session_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z:.]{1,12}:[0-9]{1,11}:[0-9]{1,21}",
            "[0-9+-]{1,12}",
            "\\PC{0,40}",
        ]
    }

    /// A page token: shaped like ours (in range or not), or anything.
    fn token_text() -> impl Strategy<Value = String> {
        prop_oneof!["[0-9+-]{0,21}\\.[0-9+-]{0,21}", "\\PC{0,40}"]
    }

    /// `token` resumes a cursor whose own token resumes it, or is invalid, saying which.
    fn check_token(token: &str) -> Result<(), TestCaseError> {
        match parse_token(token) {
            Ok(cursor) => {
                prop_assert!(token.is_empty() || token.contains('.'));
                let again = parse_token(&page_token(cursor)).map_err(|e| e.to_string());
                prop_assert_eq!(again, Ok(cursor));
            }
            Err(QueryError::Invalid(e)) => prop_assert!(e.contains(&format!("{token:?}")), "{}", e),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
        Ok(())
    }

    /// `text` is a key that prints as itself parses, or a reason naming the key's form.
    fn check_key(text: &str) -> Result<(), TestCaseError> {
        match text.parse::<Key>() {
            Ok(key) => {
                prop_assert!(!key.host.is_empty());
                prop_assert_eq!(key.to_string().parse::<Key>(), Ok(key));
            }
            Err(e) => prop_assert!(e.to_string().contains("HOST:SESSIONID:ROOT_START")),
        }
        Ok(())
    }

    #[test]
    fn seed_tokens_and_keys_out_of_range_are_invalid() {
        for token in [
            ".",
            "5.",
            ".5",
            "1.2.3",
            "-1.0",
            "18446744073709551616.0",
            "0.9223372036854775808",
            "\u{ff11}.\u{ff12}",
            "5 .9",
        ] {
            assert!(parse_token(token).is_err(), "{token}");
            check_token(token).unwrap();
        }
        check_token("18446744073709551615.-9223372036854775808").unwrap();
        for key in [
            ":1:2",
            "h:4294967296:0",
            "h:1:18446744073709551616",
            "h::1",
            "h:1:",
            "::",
        ] {
            assert!(key.parse::<Key>().is_err(), "{key}");
            check_key(key).unwrap();
        }
        check_key("h:1:2:3").unwrap();
    }

    proptest! {
        // About 1 s each in a debug build.
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_filter_selects_what_it_names_or_is_invalid(
            host in "\\PC{0,8}",
            identity in "\\PC{0,8}",
            session in session_text(),
            words in prop::collection::vec(kind_word(), 0..4),
        ) {
            let named: Result<Vec<Kind>, _> = words
                .iter()
                .map(|w| Kind::parse_filter(w).map(<[Kind]>::to_vec))
                .collect::<Result<Vec<_>, _>>()
                .map(|kinds| kinds.concat());
            let key = session.parse::<Key>().ok();
            let id = session.parse::<u32>().ok();
            let filter = Filter {
                host: host.clone(),
                identity: identity.clone(),
                session: session.clone(),
                kinds: words,
            };
            match event_filter(Some(filter)) {
                Ok(f) => {
                    let named = named.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(f.host, (!host.is_empty()).then_some(host));
                    prop_assert_eq!(f.identity, (!identity.is_empty()).then_some(identity));
                    match (f.session, key, id) {
                        (None, ..) => prop_assert!(session.is_empty()),
                        (Some(SessionMatch::Key(k)), Some(key), _) => {
                            prop_assert_eq!(k, key.to_string());
                        }
                        (Some(SessionMatch::Id(got)), None, Some(id)) => prop_assert_eq!(got, id),
                        (other, ..) => prop_assert!(false, "{session:?} selected {other:?}"),
                    }
                    // Each kind named, once.
                    for kind in Kind::ALL {
                        let times = f.kinds.iter().filter(|k| **k == kind).count();
                        prop_assert_eq!(times, usize::from(named.contains(&kind)));
                    }
                }
                Err(QueryError::Invalid(_)) => prop_assert!(
                    named.is_err() || !session.is_empty() && key.is_none() && id.is_none()
                ),
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }

        #[test]
        fn page_tokens_resume_the_cursor_they_were_made_from(time_unix_nano: u64, row: i64) {
            let cursor = Cursor { time_unix_nano, row };
            let again = parse_token(&page_token(cursor)).map_err(|e| e.to_string());
            prop_assert_eq!(again, Ok(cursor));
        }

        #[test]
        fn any_token_resumes_a_cursor_or_is_invalid(token in token_text()) {
            check_token(&token)?;
        }

        #[test]
        fn session_keys_round_trip(host in "\\PC{1,40}", sessionid: u32, start_unix_nano: u64) {
            let key = Key { host, sessionid, start_unix_nano };
            prop_assert_eq!(key.to_string().parse::<Key>(), Ok(key));
        }

        #[test]
        fn any_session_text_is_a_key_or_says_why_not(text in session_text()) {
            check_key(&text)?;
        }
    }
}
