//! Session keys: `HOST:SESSIONID:ROOT_START`, which name one audit session uniquely across
//! hosts and boots (the root's start time tells apart sessions whose id a reboot reused).

use std::{fmt, str::FromStr};

use crate::v1::{Event, event::Body};

/// The audit session `event` is filed under, with its `session_root`: its process's, or for
/// a kill that names the root of the session it killed, that session's. A kill made before
/// kills named their session's root has none, and stays filed under none.
#[must_use]
pub fn sessionid_of(event: &Event) -> Option<u32> {
    match (&event.process, &event.body) {
        (Some(p), _) => p.sessionid,
        (None, Some(Body::Kill(kill))) if event.session_root.is_some() => kill.sessionid,
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub host: String,
    pub sessionid: u32,
    /// When the process the session began in started, Unix nanoseconds.
    pub start_unix_nano: u64,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(f, &self.host, self.sessionid, self.start_unix_nano)
    }
}

/// Writes the key of session `sessionid` of `host` begun at `start_unix_nano`, as `Key`
/// displays it, without making a `Key`: verify writes one for every record it checks.
pub fn write_key(
    out: &mut impl fmt::Write,
    host: &str,
    sessionid: u32,
    start_unix_nano: u64,
) -> fmt::Result {
    write!(out, "{host}:{sessionid}:{start_unix_nano}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey(pub String);

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a session key (HOST:SESSIONID:ROOT_START, as `sessions` lists them)",
            self.0
        )
    }
}

impl std::error::Error for BadKey {}

impl FromStr for Key {
    type Err = BadKey;

    /// Parsed from the right, so a host name holding `:` still reads.
    fn from_str(s: &str) -> Result<Self, BadKey> {
        let bad = || BadKey(s.to_owned());
        let mut parts = s.rsplitn(3, ':');
        let start = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let sessionid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        Ok(Self {
            host: host.to_owned(),
            sessionid,
            start_unix_nano: start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_say_why() {
        let key = Key {
            host: "h:1".into(),
            sessionid: 7,
            start_unix_nano: 99,
        };
        assert_eq!(key.to_string(), "h:1:7:99");
        assert_eq!("h:1:7:99".parse::<Key>().unwrap(), key);
        for bad in ["", "7", "h:7", ":7:9", "h:x:9", "h:7:-1"] {
            let e = bad.parse::<Key>().unwrap_err().to_string();
            assert!(e.contains("HOST:SESSIONID:ROOT_START"), "{bad}: {e}");
        }
    }
}
