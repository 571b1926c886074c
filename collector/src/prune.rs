//! Retention's prune records (docs/evidence.md, "Retention"): the signed note that says
//! which leaves of a host's log were deleted, with the compact range that keeps the roots of
//! the rest computable, where each cut chain resumes, and the cosigned checkpoint that still
//! covers what remains. The writer makes them; verify reads them back from the collector's
//! chain and accepts missing leaves only where one covers them.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use tlog::Hash;

const HEADER: &str = "recorder.prune.v1";

/// Where a chain cut by a prune resumes: its first kept seq and the hash of the record
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cut {
    pub chain_id: String,
    pub first_kept: u64,
    pub prev: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PruneNote {
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
    pub(crate) fn to_body(&self) -> String {
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
    pub(crate) fn parse_body(text: &str) -> Result<Self, String> {
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
