//! Which grants have ended, on the view's timeline (`View::at`): a grant ends once per
//! end, at its expiry or its revocation, whichever came first. An extension gives it a new
//! end, which ends it again.

use std::collections::HashSet;

use proto::{
    grant::{end, revoked_first},
    v1::grant::OnExpiry,
};

use super::rules::View;

/// A grant that has just ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub id: String,
    /// `on_expiry: kill`: what used it dies.
    pub kill: bool,
    /// `expired` or `revoked`.
    pub reason: &'static str,
}

#[derive(Default)]
pub struct Expiry {
    /// Grant ids with the end they ended at.
    ended: HashSet<(String, u64)>,
}

impl Expiry {
    /// The grants of `view` that ended by `now` and were not reported before.
    pub fn due(&mut self, view: &View, now: u64) -> Vec<Ended> {
        let mut due = Vec::new();
        for (id, g) in &view.grants {
            if end(g) <= now && self.ended.insert((id.to_string(), end(g))) {
                due.push(Ended {
                    id: id.to_string(),
                    kill: g.on_expiry() == OnExpiry::Kill,
                    reason: if revoked_first(g) {
                        "revoked"
                    } else {
                        "expired"
                    },
                });
            }
        }
        due
    }

    /// When the next grant of `view` ends, if one is pending.
    #[must_use]
    pub fn next_end(&self, view: &View) -> Option<u64> {
        view.grants
            .iter()
            .map(|(id, g)| (id, end(g)))
            .filter(|(id, end)| !self.ended.contains(&(id.to_string(), *end)))
            .map(|(_, end)| end)
            .min()
    }

    /// Whether grant `id` has ended at `end`.
    #[must_use]
    pub fn has_ended(&self, id: &str, end: u64) -> bool {
        self.ended.contains(&(id.to_owned(), end))
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::{grant::OnExpiry, policy::Mode};

    use super::*;
    use crate::enforce::rules::tests::{SEC, T0, grant, view};

    #[test]
    fn a_grant_ends_once_at_its_end() {
        let v = View::adopt(
            None,
            view(vec![grant("g-1", &[], OnExpiry::Kill)], Mode::Alert),
            T0,
        );
        let mut e = Expiry::default();
        assert_eq!(e.next_end(&v), Some(T0 + 10 * SEC));
        assert!(e.due(&v, T0 + 10 * SEC - 1).is_empty(), "not yet");
        assert_eq!(
            e.due(&v, T0 + 10 * SEC),
            [Ended {
                id: "g-1".into(),
                kill: true,
                reason: "expired"
            }]
        );
        assert!(e.due(&v, T0 + 20 * SEC).is_empty(), "a grant ends once");
        assert_eq!(e.next_end(&v), None);
        let mut extended = view(vec![grant("g-1", &[], OnExpiry::Kill)], Mode::Alert);
        extended.grants[0].expires_at_unix_nano += 30 * SEC;
        let extended = View::adopt(Some(&v), extended, T0);
        assert!(
            e.due(&extended, T0 + 20 * SEC).is_empty(),
            "extended past now"
        );
        assert_eq!(e.next_end(&extended), Some(T0 + 40 * SEC));
        assert_eq!(
            e.due(&extended, T0 + 40 * SEC).len(),
            1,
            "and ends at its new end"
        );
        let revoked = View::adopt(Some(&v), view(Vec::new(), Mode::Alert), T0 + SEC);
        let mut e = Expiry::default();
        assert_eq!(e.due(&revoked, T0 + SEC)[0].reason, "revoked");
    }
}
