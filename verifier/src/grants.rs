//! The collectors' chains replayed: the grants their chained grant changes leave, against
//! the `grants` table (which is what agents are sent), and the hosts whose logs they say
//! were started, which must still be present. Each collector chains its own grant changes;
//! each change's decision number says where it stands among all of them.

use std::collections::BTreeMap;

use prost::Message as _;
use proto::{
    kind::Kind,
    v1::{Event, Finding, Grant, event::Body},
};

use crate::ChainRow;

/// The grant changes of the collectors' chains, and the hosts whose logs they say were
/// started.
#[derive(Debug, Default)]
pub struct Grants {
    /// Each change: its decision number, where it was chained, and the grant it leaves.
    changes: Vec<(u64, String, Grant)>,
    logs_started: Vec<String>,
}

impl Grants {
    /// Takes the next record of the collector's chain `chain_id` (whose hash verified).
    /// The changes of one chain come in its order; the chains, in any.
    pub fn replay(&mut self, chain_id: &str, row: &ChainRow<'_>, findings: &mut Vec<Finding>) {
        let subject = || crate::record_subject(chain_id, row.seq);
        let Ok(event) = Event::decode(row.event) else {
            findings.push(Finding {
                subject: subject(),
                reason: "its bytes are not a recorder.v1.Event".into(),
            });
            return;
        };
        let kind = Kind::of(&event).map_or("", Kind::name);
        if kind != row.columns.kind {
            findings.push(Finding {
                subject: subject(),
                reason: format!(
                    "its stored kind is {:?}, its bytes say {kind:?}",
                    row.columns.kind
                ),
            });
        }
        match event.body {
            Some(Body::GrantChange(change)) => {
                if let Some(grant) = change.grant {
                    self.changes.push((change.decision, subject(), grant));
                }
            }
            Some(Body::Admin(act)) if act.action == "log_started" => {
                self.logs_started.push(act.host);
            }
            _ => {}
        }
    }

    /// The `grants` table (`stored`) must be exactly what the changes give, replayed in
    /// the order of their decisions. Two changes of one decision number are a finding: the
    /// store's count of decisions went back, so their order is not known.
    pub fn compare(&mut self, stored: Vec<Grant>, findings: &mut Vec<Finding>) {
        // Stable: the changes made before decisions were numbered keep their chain's order.
        self.changes.sort_by_key(|(decision, ..)| *decision);
        let mut replayed = BTreeMap::new();
        let mut last: Option<(u64, &str)> = None;
        for (decision, subject, grant) in &self.changes {
            if let Some((before, at)) = last
                && before == *decision
                && *decision != 0
            {
                findings.push(Finding {
                    subject: subject.clone(),
                    reason: format!(
                        "its grant change has decision {decision}, as the one at {at} has"
                    ),
                });
            }
            last = Some((*decision, subject));
            replayed.insert(grant.id.clone(), grant);
        }
        let stored: BTreeMap<String, Grant> =
            stored.into_iter().map(|g| (g.id.clone(), g)).collect();
        for (id, grant) in &stored {
            if replayed.get(id) != Some(&grant) {
                findings.push(Finding {
                    subject: format!("grant {id}"),
                    reason: "the grants table differs from its chained grant changes".into(),
                });
            }
        }
        for id in replayed.keys().filter(|id| !stored.contains_key(*id)) {
            findings.push(Finding {
                subject: format!("grant {id}"),
                reason: "chained grant changes make it, but the grants table lacks it".into(),
            });
        }
    }

    /// Every host of `host` (empty: any) whose log the chain says was started must be
    /// among `present` (sorted).
    pub fn deleted_hosts(&self, present: &[String], host: &str, findings: &mut Vec<Finding>) {
        for h in self
            .logs_started
            .iter()
            .filter(|h| host.is_empty() || **h == host)
        {
            if present.binary_search(h).is_err() {
                findings.push(Finding {
                    subject: format!("host {h}"),
                    reason: "a collector's chain says it cosigned this host's log, but the \
                             store holds none of it: the host was deleted"
                        .into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::GrantChange;

    use super::*;
    use crate::Columns;

    /// A `grant_change` record whose change leaves grant `id` with `reason`, at `decision`.
    fn change(id: &str, reason: &str, decision: u64) -> Vec<u8> {
        Event {
            body: Some(Body::GrantChange(GrantChange {
                grant: Some(Grant {
                    id: id.into(),
                    reason: reason.into(),
                    ..Grant::default()
                }),
                decision,
                ..GrantChange::default()
            })),
            ..Event::default()
        }
        .encode_to_vec()
    }

    fn replay(grants: &mut Grants, chain_id: &str, seq: u64, event: &[u8]) {
        let row = ChainRow {
            row: 0,
            seq,
            event,
            hash: &[],
            columns: Columns::bare("collector", "grant_change"),
        };
        grants.replay(chain_id, &row, &mut Vec::new());
    }

    fn grant(id: &str, reason: &str) -> Grant {
        Grant {
            id: id.into(),
            reason: reason.into(),
            ..Grant::default()
        }
    }

    /// Changes of one grant made through two collectors are replayed in the order of their
    /// decisions, whichever chain is read first, after those made before decisions were
    /// numbered; a decision number chained twice is named.
    #[test]
    fn grant_changes_of_every_chain_replay_in_the_order_of_their_decisions() {
        let mut grants = Grants::default();
        replay(&mut grants, "collector/b", 1, &change("g", "second", 2));
        replay(&mut grants, "collector/a", 1, &change("g", "first", 1));
        replay(&mut grants, "collector/a", 2, &change("g", "third", 3));
        // Made before decisions were numbered, in the one chain collectors shared then:
        // before every numbered one, in that chain's order.
        replay(&mut grants, "collector", 1, &change("g", "older", 0));
        replay(&mut grants, "collector", 2, &change("h", "old", 0));
        replay(
            &mut grants,
            "collector",
            3,
            &change("h", "last of the old", 0),
        );
        let mut findings = Vec::new();
        let stored = vec![grant("g", "third"), grant("h", "last of the old")];
        grants.compare(stored, &mut findings);
        assert!(findings.is_empty(), "{findings:?}");

        let mut grants = Grants::default();
        replay(&mut grants, "collector/a", 1, &change("g", "first", 1));
        replay(&mut grants, "collector/b", 1, &change("g", "second", 1));
        let mut findings = Vec::new();
        grants.compare(vec![grant("g", "second")], &mut findings);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].subject, "chain collector/b seq 1");
        assert!(
            findings[0]
                .reason
                .contains("as the one at chain collector/a seq 1 has"),
            "{findings:?}"
        );
    }
}
