//! Event kinds: the one list of their names. Operators filter by them, the collector stores
//! them as a column, the agent names lost records by them, and the JSON schema prints them.

use crate::v1::{Event, event::Body, tty::Direction};

/// What an event is. Names are part of the contract (docs/events.md): never rename one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Exec,
    Fork,
    Exit,
    TtyOut,
    TtyIn,
    TtyResize,
    Image,
    Gap,
    ChainStart,
    Alert,
    Violation,
    Kill,
    GrantChange,
    Registration,
    Access,
    Admin,
    Receipt,
    Prune,
    ChainStop,
    /// Bytes an agent chained that are not a record it may send: kept verbatim and found
    /// by this kind, never by what they claim to be. No event's body is of this kind.
    Malformed,
}

impl Kind {
    pub const ALL: [Self; 20] = [
        Self::Exec,
        Self::Fork,
        Self::Exit,
        Self::TtyOut,
        Self::TtyIn,
        Self::TtyResize,
        Self::Image,
        Self::Gap,
        Self::ChainStart,
        Self::Alert,
        Self::Violation,
        Self::Kill,
        Self::GrantChange,
        Self::Registration,
        Self::Access,
        Self::Admin,
        Self::Receipt,
        Self::Prune,
        Self::ChainStop,
        Self::Malformed,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::TtyOut => "tty_out",
            Self::TtyIn => "tty_in",
            Self::TtyResize => "tty_resize",
            Self::Image => "image",
            Self::Gap => "gap",
            Self::ChainStart => "chain_start",
            Self::Alert => "alert",
            Self::Violation => "violation",
            Self::Kill => "kill",
            Self::GrantChange => "grant_change",
            Self::Registration => "registration",
            Self::Access => "access",
            Self::Admin => "admin",
            Self::Receipt => "receipt",
            Self::Prune => "prune",
            Self::ChainStop => "chain_stop",
            Self::Malformed => "malformed",
        }
    }

    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind of `event`, or `None` for an event without a body.
    #[must_use]
    pub fn of(event: &Event) -> Option<Self> {
        Some(match event.body.as_ref()? {
            Body::Exec(_) => Self::Exec,
            Body::Fork(_) => Self::Fork,
            Body::Exit(_) => Self::Exit,
            Body::Tty(t) if t.direction() == Direction::Input => Self::TtyIn,
            Body::Tty(_) => Self::TtyOut,
            Body::TtyResize(_) => Self::TtyResize,
            Body::Image(_) => Self::Image,
            Body::Gap(_) => Self::Gap,
            Body::ChainStart(_) => Self::ChainStart,
            Body::Alert(_) => Self::Alert,
            Body::Violation(_) => Self::Violation,
            Body::Kill(_) => Self::Kill,
            Body::GrantChange(_) => Self::GrantChange,
            Body::Registration(_) => Self::Registration,
            Body::Access(_) => Self::Access,
            Body::Admin(_) => Self::Admin,
            Body::Receipt(_) => Self::Receipt,
            Body::Prune(_) => Self::Prune,
            Body::ChainStop(_) => Self::ChainStop,
        })
    }

    /// The kinds a filter word selects: a kind's name, or `tty` for both terminal
    /// directions.
    pub fn parse_filter(word: &str) -> Result<&'static [Self], UnknownKind> {
        const TTY: [Kind; 2] = [Kind::TtyOut, Kind::TtyIn];
        if word == "tty" {
            return Ok(&TTY);
        }
        Self::ALL
            .iter()
            .position(|k| k.name() == word)
            .map(|i| std::slice::from_ref(&Self::ALL[i]))
            .ok_or_else(|| UnknownKind(word.to_owned()))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A filter word that names no kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl std::fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown kind {:?}; kinds are tty (both directions)",
            self.0
        )?;
        for k in Kind::ALL {
            write!(f, ", {k}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownKind {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_tty_means_both_directions() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
            assert_eq!(Kind::parse_filter(k.name()).unwrap(), [k]);
        }
        assert_eq!(
            Kind::parse_filter("tty").unwrap(),
            [Kind::TtyOut, Kind::TtyIn]
        );
        let e = Kind::parse_filter("nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("grant_change"), "{e}");
    }
}
