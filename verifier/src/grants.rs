//! The collector's chain replayed: the grants its chained grant changes leave, against the
//! `grants` table (which is what agents are sent), and the hosts whose logs it says it
//! started, which must still be present.

use std::collections::BTreeMap;

use prost::Message as _;
use proto::{
    kind::Kind,
    v1::{Event, Finding, Grant, event::Body},
};

use crate::{COLLECTOR_CHAIN, ChainRow};

/// The grants as the collector's chained grant changes leave them, and the hosts whose
/// logs the chain says it started.
#[derive(Debug, Default)]
pub struct Grants {
    replayed: BTreeMap<String, Grant>,
    logs_started: Vec<String>,
}

impl Grants {
    /// Takes the next record of the collector's chain (whose hash verified).
    pub fn replay(&mut self, row: &ChainRow<'_>, findings: &mut Vec<Finding>) {
        let Ok(event) = Event::decode(row.event) else {
            findings.push(Finding {
                subject: format!("chain {COLLECTOR_CHAIN} seq {}", row.seq),
                reason: "its bytes are not a recorder.v1.Event".into(),
            });
            return;
        };
        let kind = Kind::of(&event).map_or("", Kind::name);
        if kind != row.columns.kind {
            findings.push(Finding {
                subject: format!("chain {COLLECTOR_CHAIN} seq {}", row.seq),
                reason: format!(
                    "its stored kind is {:?}, its bytes say {kind:?}",
                    row.columns.kind
                ),
            });
        }
        match event.body {
            Some(Body::GrantChange(change)) => {
                if let Some(grant) = change.grant {
                    self.replayed.insert(grant.id.clone(), grant);
                }
            }
            Some(Body::Admin(act)) if act.action == "log_started" => {
                self.logs_started.push(act.host);
            }
            _ => {}
        }
    }

    /// The `grants` table (`stored`) must be exactly what the changes give.
    pub fn compare(&self, stored: Vec<Grant>, findings: &mut Vec<Finding>) {
        let stored: BTreeMap<String, Grant> =
            stored.into_iter().map(|g| (g.id.clone(), g)).collect();
        for (id, grant) in &stored {
            if self.replayed.get(id) != Some(grant) {
                findings.push(Finding {
                    subject: format!("grant {id}"),
                    reason: "the grants table differs from its chained grant changes".into(),
                });
            }
        }
        for id in self.replayed.keys().filter(|id| !stored.contains_key(*id)) {
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
                    reason: "the collector's chain says it cosigned this host's log, but the \
                             store holds none of it: the host was deleted"
                        .into(),
                });
            }
        }
    }
}
