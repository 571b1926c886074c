//! Holes (collector.proto, `SpoolHole`): records of a host's chain that its agent lost in
//! its spool before it shipped them, as the collector chained them (`spool_hole` alerts in
//! its own chain). A walk accepts a chain's jump over exactly a hole's seqs, to the anchor the
//! hole names by hash and by the digest of its bytes; nothing else may jump.

use std::collections::HashMap;

use prost::Message as _;
use proto::{
    kind::Kind,
    v1::{Alert, Event, event::Body},
};
use sha2::{Digest as _, Sha256};

const KIND: &str = "spool_hole";

/// The record a chain resumes at after a hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: [u8; 32],
    pub event_sha256: [u8; 32],
}

impl Anchor {
    /// Whether a stored record is this anchor: its seq, its stored hash and its bytes.
    #[must_use]
    pub fn is(&self, seq: u64, hash: &[u8], event: &[u8]) -> bool {
        self.seq == seq && self.hash[..] == *hash && Sha256::digest(event)[..] == self.event_sha256
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hole {
    pub first_lost: u64,
    /// `None`: nothing of the chain followed the lost records.
    pub anchor: Option<Anchor>,
}

/// The host whose chain a record of the collector's chain declares a hole in, if it is one.
#[must_use]
pub fn host_of(kind: &str, event: &[u8]) -> Option<String> {
    hole_alert(kind, event).map(|a| a.host)
}

/// The `spool_hole` alert a record of the collector's chain is, if it is one.
fn hole_alert(kind: &str, event: &[u8]) -> Option<Alert> {
    if kind != Kind::Alert.name() {
        return None;
    }
    match Event::decode(event).ok()?.body? {
        Body::Alert(alert) if alert.kind == KIND && alert.hole.is_some() => Some(alert),
        _ => None,
    }
}

/// The holes chained in the collector's chain, by the chain they are in.
#[derive(Clone, Debug, Default)]
pub struct Holes {
    by_chain: HashMap<String, Vec<Hole>>,
}

impl Holes {
    /// Takes a record of the collector's chain (its kind column and bytes), keeping the
    /// hole it declares, if it is one.
    pub fn read(&mut self, kind: &str, event: &[u8]) {
        let Some(alert) = hole_alert(kind, event) else {
            return;
        };
        let Some(hole) = alert.hole else {
            return;
        };
        let anchor = match (
            <[u8; 32]>::try_from(hole.anchor_hash.as_slice()),
            <[u8; 32]>::try_from(hole.anchor_event_sha256.as_slice()),
        ) {
            (Ok(hash), Ok(event_sha256)) => Some(Anchor {
                seq: alert.seq,
                hash,
                event_sha256,
            }),
            _ => None,
        };
        self.by_chain.entry(alert.chain_id).or_default().push(Hole {
            first_lost: hole.first_lost,
            anchor,
        });
    }

    /// The holes of one chain.
    #[must_use]
    pub fn of(&self, chain_id: &str) -> Vec<Hole> {
        self.by_chain.get(chain_id).cloned().unwrap_or_default()
    }

    /// Whether stored record `seq` of `chain_id` is the anchor of a hole: its hash then
    /// stands as stored, since the record it links to is lost.
    #[must_use]
    pub fn anchors(&self, chain_id: &str, seq: u64, hash: &[u8], event: &[u8]) -> bool {
        self.by_chain.get(chain_id).is_some_and(|holes| {
            holes
                .iter()
                .filter_map(|h| h.anchor.as_ref())
                .any(|a| a.is(seq, hash, event))
        })
    }
}

/// A database admin may not use a hole to hide an edit: the jump must start where the hole
/// says, end at the anchor it names, and the anchor's bytes must be the ones it digested.
#[cfg(test)]
mod tests {
    use proto::{
        chain::Chain,
        v1::{self, ChainVerdict},
    };

    use super::*;
    use crate::{ChainRow, Columns, Head, Walk};

    const CHAIN: &str = "h:boot:1";

    /// Records 0 to 7 of a chain, with 3 and 4 lost: the stored rows, and the hole the
    /// collector chains for them as a record of its chain.
    fn stored() -> (Vec<v1::ChainedEvent>, Vec<u8>) {
        let mut chain = Chain::new(CHAIN.into());
        let mut records: Vec<_> = (0..8u8).map(|i| chain.record(vec![i; 4])).collect();
        records.drain(3..5);
        let anchor = &records[3];
        let alert = Event {
            body: Some(Body::Alert(Alert {
                kind: KIND.into(),
                chain_id: CHAIN.into(),
                seq: anchor.seq,
                hole: Some(v1::Hole {
                    first_lost: 3,
                    anchor_hash: anchor.hash.clone(),
                    anchor_event_sha256: Sha256::digest(&anchor.event).to_vec(),
                    skipped_bytes: 100,
                    cause: "corrupt".into(),
                }),
                ..Alert::default()
            })),
            ..Event::default()
        };
        (records, alert.encode_to_vec())
    }

    fn walk(records: &[v1::ChainedEvent], holes: &Holes) -> ChainVerdict {
        let mut walk = Walk::new(CHAIN, None).with_holes(holes.of(CHAIN));
        for (row, r) in records.iter().enumerate() {
            let columns = Columns::bare("h", "exec");
            let record = ChainRow {
                row: i64::try_from(row).unwrap(),
                seq: r.seq,
                event: &r.event,
                hash: &r.hash,
                columns,
            };
            if walk.step(record, &mut |_| {}).is_break() {
                break;
            }
        }
        let last = records.last().unwrap();
        walk.verdict(&Head {
            chain_id: CHAIN.into(),
            host: "h".into(),
            next_seq: last.seq + 1,
            head_hash: last.hash.clone().try_into().unwrap(),
            checkpoint: None,
        })
    }

    #[test]
    fn a_declared_hole_is_jumped_and_counted() {
        let (records, alert) = stored();
        let mut holes = Holes::default();
        holes.read("alert", &alert);
        let verdict = walk(&records, &holes);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!((verdict.lost, verdict.records), (2, 6));
        assert!(holes.anchors(CHAIN, 5, &records[3].hash, &records[3].event));
    }

    #[test]
    fn no_hole_no_jump() {
        let (records, alert) = stored();
        let mut holes = Holes::default();
        // Not the collector's alert kind column: not a hole.
        holes.read("exec", &alert);
        let verdict = walk(&records, &holes);
        assert_eq!(verdict.first_bad_seq, Some(3), "{verdict:?}");
    }

    #[test]
    fn an_edited_anchor_fails() {
        let (mut records, alert) = stored();
        let mut holes = Holes::default();
        holes.read("alert", &alert);
        let mut edited = records[3].event.to_vec();
        edited[0] ^= 1;
        records[3].event = edited.into();
        let verdict = walk(&records, &holes);
        assert_eq!(verdict.first_bad_seq, Some(3), "{verdict:?}");
        assert!(!holes.anchors(CHAIN, 5, &records[3].hash, &records[3].event));
    }

    #[test]
    fn a_hole_covers_only_its_own_seqs() {
        let (mut records, alert) = stored();
        let mut holes = Holes::default();
        holes.read("alert", &alert);
        // One more record deleted before the hole: the jump no longer starts where it says.
        records.remove(2);
        let verdict = walk(&records, &holes);
        assert!(!verdict.ok, "{verdict:?}");
        assert_eq!(verdict.first_bad_seq, Some(2), "{verdict:?}");
    }
}
