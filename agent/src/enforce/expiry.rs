//! Which grants have ended, by this host's clock: each grant ends once, at its expiry or
//! its revocation, whichever came first.

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
    ended: HashSet<String>,
}

impl Expiry {
    /// The grants of `view` that ended by `now` and were not reported before.
    pub fn due(&mut self, view: &View, now: u64) -> Vec<Ended> {
        let mut due = Vec::new();
        for (id, g) in &view.grants {
            if end(g) <= now && !self.ended.contains(&**id) {
                self.ended.insert(id.to_string());
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
            .filter(|(id, _)| !self.ended.contains(&**id))
            .map(|(_, g)| end(g))
            .min()
    }

    /// Whether grant `id` has ended.
    #[must_use]
    pub fn has_ended(&self, id: &str) -> bool {
        self.ended.contains(id)
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
        let revoked = View::adopt(Some(&v), view(Vec::new(), Mode::Alert), T0 + SEC);
        let mut e = Expiry::default();
        assert_eq!(e.due(&revoked, T0 + SEC)[0].reason, "revoked");
    }
}
