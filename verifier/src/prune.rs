//! Retention's prune records (docs/evidence.md, "Retention"): the signed note that says
//! which leaves of a host's log were deleted, with the compact range that keeps the roots of
//! the rest computable, where each cut chain resumes, and the cosigned checkpoint that still
//! covers what remains. The collector's writer makes them; verify reads them back and
//! accepts missing leaves only where one covers them.

use std::collections::HashMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use prost::Message as _;
use proto::{
    kind::Kind,
    v1::{Event, Finding, event::Body},
};
use tlog::Hash;

use crate::Trust;

const HEADER: &str = "recorder.prune.v1";

/// Where a chain cut by a prune resumes: its first kept seq and the hash of the record
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub chain_id: String,
    pub first_kept: u64,
    pub prev: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneNote {
    /// The log's origin.
    pub log: String,
    /// Leaves `0 .. end` are deleted.
    pub end: u64,
    /// Their compact range, largest subtree first.
    pub frontier: Vec<Hash>,
    pub cuts: Vec<Cut>,
    /// The cosigned checkpoint (size, root) that covers the rest.
    pub checkpoint: (u64, Hash),
}

impl PruneNote {
    #[must_use]
    pub fn to_body(&self) -> String {
        use std::fmt::Write as _;
        let mut body = format!("{HEADER}\nlog {}\nleaves 0 {}\n", self.log, self.end);
        for hash in &self.frontier {
            let _ = writeln!(body, "frontier {}", STANDARD.encode(hash));
        }
        for cut in &self.cuts {
            let _ = writeln!(
                body,
                "chain {} {} {}",
                cut.chain_id,
                cut.first_kept,
                STANDARD.encode(cut.prev)
            );
        }
        let _ = writeln!(
            body,
            "checkpoint {} {}",
            self.checkpoint.0,
            STANDARD.encode(self.checkpoint.1)
        );
        body
    }

    /// Reads a note's text; every line must be as `to_body` writes it.
    pub fn parse_body(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("not a {HEADER} note"));
        }
        let mut field = |name: &str| -> Result<Vec<String>, String> {
            let line = lines.next().ok_or(format!("no {name} line"))?;
            let mut words = line.split(' ');
            if words.next() != Some(name) {
                return Err(format!("expected a {name} line, found {line:?}"));
            }
            Ok(words.map(str::to_owned).collect())
        };
        let log = field("log")?.join(" ");
        let leaves = field("leaves")?;
        let end = match leaves.as_slice() {
            [zero, end] if zero == "0" => number(end)?,
            _ => return Err("the leaves line must be `leaves 0 END`".into()),
        };
        let mut note = Self {
            log,
            end,
            frontier: Vec::new(),
            cuts: Vec::new(),
            checkpoint: (0, [0; 32]),
        };
        let mut checkpoint = None;
        for line in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["frontier", hash] if note.cuts.is_empty() && checkpoint.is_none() => {
                    note.frontier.push(hash32(hash)?);
                }
                ["chain", id, seq, hash] if checkpoint.is_none() => note.cuts.push(Cut {
                    chain_id: (*id).to_owned(),
                    first_kept: number(seq)?,
                    prev: hash32(hash)?,
                }),
                ["checkpoint", size, root] if checkpoint.is_none() => {
                    checkpoint = Some((number(size)?, hash32(root)?));
                }
                _ => return Err(format!("unexpected line {line:?}")),
            }
        }
        note.checkpoint = checkpoint.ok_or("no checkpoint line")?;
        Ok(note)
    }
}

/// The note of a prune record, if the stored record (of kind `kind`) is one.
#[must_use]
pub fn note_of(kind: &str, event: &[u8]) -> Option<String> {
    if kind != Kind::Prune.name() {
        return None;
    }
    match Event::decode(event) {
        Ok(Event {
            body: Some(Body::Prune(prune)),
            ..
        }) => Some(prune.note),
        _ => None,
    }
}

/// What the valid prune records of one host's log say: the latest one's range and
/// frontier, and where each chain they cut resumes.
#[derive(Clone, Debug)]
pub struct HostPrune {
    pub end: u64,
    pub frontier: Vec<Hash>,
    pub checkpoint: (u64, Hash),
    pub cuts: HashMap<String, Cut>,
}

/// The prune records whose signature (the collector's log key) holds, by host.
#[derive(Debug, Default)]
pub struct Prunes {
    pub by_host: HashMap<String, HostPrune>,
}

impl Prunes {
    /// Adds the signed prune note `text`, chained at `subject`. One that does not verify
    /// is a finding, and covers nothing.
    pub fn add(&mut self, trust: &Trust, subject: &str, text: &str, findings: &mut Vec<Finding>) {
        match open(trust, text) {
            Ok((host, note)) => self.insert(host, note),
            Err(why) => findings.push(Finding {
                subject: subject.to_owned(),
                reason: why,
            }),
        }
    }

    fn insert(&mut self, host: String, note: PruneNote) {
        let entry = self.by_host.entry(host).or_insert_with(|| HostPrune {
            end: 0,
            frontier: Vec::new(),
            checkpoint: (0, tlog::EMPTY_ROOT),
            cuts: HashMap::new(),
        });
        if note.end > entry.end {
            entry.end = note.end;
            entry.frontier = note.frontier;
            entry.checkpoint = note.checkpoint;
        }
        for cut in note.cuts {
            entry.cuts.insert(cut.chain_id.clone(), cut);
        }
    }

    /// Where each chain cut by a prune resumes.
    #[must_use]
    pub fn cuts(&self) -> HashMap<&str, &Cut> {
        self.by_host
            .values()
            .flat_map(|p| p.cuts.iter().map(|(chain, cut)| (chain.as_str(), cut)))
            .collect()
    }
}

/// The host a signed prune note is of, and what it says.
fn open(trust: &Trust, text: &str) -> Result<(String, PruneNote), String> {
    let opened = signed_by_a_collector(trust, text)
        .and_then(|note| PruneNote::parse_body(note.text()))
        .map_err(|why| format!("a prune record that does not verify: {why}"))?;
    let prefix = trust.origin("");
    match opened.log.strip_prefix(&prefix) {
        Some(host) => Ok((host.to_owned(), opened)),
        None => Err(format!(
            "a prune record of {}, not a host of this deployment",
            opened.log
        )),
    }
}

/// The note `text`, signed with the log key of this collector or of another of the store:
/// the first that has signed it must verify.
fn signed_by_a_collector(trust: &Trust, text: &str) -> Result<tlog::Note, String> {
    let note = tlog::Note::parse(text.as_bytes()).map_err(|e| e.to_string())?;
    let key = trust
        .log_keys()
        .find(|k| {
            note.signatures()
                .iter()
                .any(|s| s.is_by(k.name(), k.key_id()))
        })
        .or(trust.log.as_ref())
        .ok_or_else(|| "the collector has no log key".to_owned())?;
    note.verify(key).map_err(|e| e.to_string())?;
    Ok(note)
}

fn number(word: &str) -> Result<u64, String> {
    word.parse()
        .map_err(|_| format!("{word:?} is not a number"))
}

fn hash32(word: &str) -> Result<Hash, String> {
    let bytes = STANDARD
        .decode(word)
        .map_err(|e| format!("{word:?}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{word:?} is not a 32-byte hash"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prune_note_reads_back_as_written_and_nothing_else_does() {
        let note = PruneNote {
            log: "d/recorder/host/h".into(),
            end: 600,
            frontier: vec![[1; 32], [2; 32]],
            cuts: vec![Cut {
                chain_id: "h:b:1".into(),
                first_kept: 600,
                prev: [3; 32],
            }],
            checkpoint: (1000, [4; 32]),
        };
        let body = note.to_body();
        assert_eq!(PruneNote::parse_body(&body).unwrap(), note);
        for bad in [
            body.replace("leaves 0", "leaves 1"),
            body.replace("recorder.prune.v1", "recorder.prune.v2"),
            body.replace("checkpoint 1000", "checkpoint x"),
            format!("{body}frontier {}\n", STANDARD.encode([5; 32])),
            body.lines().take(5).collect::<Vec<_>>().join("\n"),
        ] {
            assert!(PruneNote::parse_body(&bad).is_err(), "{bad}");
        }
    }
}
