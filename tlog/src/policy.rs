//! c2sp.org/tlog-policy: which logs and witnesses a verifier trusts, and the quorum of
//! cosignatures a checkpoint needs.
//!
//! ```text
//! log <vkey> [<url>]
//! witness <name> <vkey> [<url>]
//! group <name> all|any|<k> <member>...
//! quorum <name>|none
//! ```
//!
//! Log keys here are Ed25519 note keys (type 0x01) and witness keys Ed25519 `cosignature/v1`
//! keys (type 0x04): the only types this crate signs with, so other types are refused.

use std::collections::{HashMap, HashSet};

use crate::checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
use crate::cosignature::CosignatureError;
use crate::keys::{CosignatureVerifier, KeyError, Verifier};
use crate::note::{Note, NoteError};

/// The largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 16 * 1024 * 1024;

/// The most `log` lines: enough for one per host of a large fleet in a single file (the spec
/// asks for at least 32).
pub const MAX_POLICY_LOGS: usize = 100_000;

/// The most `witness` lines (the spec asks for at least 32).
pub const MAX_POLICY_WITNESSES: usize = 1024;

/// The most `group` lines (the spec asks for at least 32).
pub const MAX_POLICY_GROUPS: usize = 1024;

/// The predefined name of the empty quorum.
const NONE: &str = "none";

/// Why a policy file was refused; lines count from 1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("the policy is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    #[error("the policy is not UTF-8")]
    Utf8,
    #[error("line {line}: the control character {byte:#04x} is not allowed")]
    Character { line: usize, byte: u8 },
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: &'static str },
    #[error("line {line}: {source}")]
    Key {
        line: usize,
        #[source]
        source: KeyError,
    },
    #[error("line {line}: {name:?} is already defined or is reserved")]
    Redefined { line: usize, name: String },
    #[error("line {line}: {name:?} is not defined on an earlier line")]
    Undefined { line: usize, name: String },
    #[error("line {line}: {name:?} is already a group member")]
    MemberTwice { line: usize, name: String },
    #[error("line {line}: the group threshold must be all, any or a number from 1 to {members}")]
    Threshold { line: usize, members: usize },
    #[error("line {line}: the key is listed twice")]
    DuplicateKey { line: usize },
    #[error("line {line}: more than the {limit} entries of this kind allowed")]
    Limit { line: usize, limit: usize },
    #[error("line {line}: a second quorum line")]
    SecondQuorum { line: usize },
    #[error("the policy has no quorum line")]
    NoQuorum,
}

/// Why a checkpoint does not satisfy a policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("the checkpoint carries no valid signature of a log in the policy")]
    NoLog,
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Cosignature(#[from] CosignatureError),
    #[error("the checkpoint's cosignatures do not meet the policy's quorum")]
    Quorum,
}

/// A witness or group, by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Witness(usize),
    Group(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    threshold: usize,
    members: Vec<Member>,
}

/// A log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLog {
    /// The log's key; its name is the log's origin.
    pub verifier: Verifier,
    /// Where to reach the log, if given; unused by verification.
    pub url: Option<String>,
}

/// A witness line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWitness {
    /// The witness's name within the policy (not its key name).
    pub name: String,
    /// The witness's cosignature key.
    pub verifier: CosignatureVerifier,
    /// The witness's submission prefix, if given; unused by verification.
    pub url: Option<String>,
}

/// What the quorum line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quorum {
    /// `quorum none`: no cosignature needed.
    None,
    Of(Member),
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    logs: Vec<PolicyLog>,
    /// Logs by key name and key ID, the pair a signature line names.
    log_keys: HashMap<(String, u32), usize>,
    witnesses: Vec<PolicyWitness>,
    groups: Vec<Group>,
    quorum: Quorum,
}

/// Splits a line at runs of spaces and tabs, the only whitespace of the format.
fn items(line: &str) -> Vec<&str> {
    line.split([' ', '\t']).filter(|s| !s.is_empty()).collect()
}

/// The parser's running state: names defined so far, and what must stay unique.
#[derive(Default)]
struct Parser {
    logs: Vec<PolicyLog>,
    log_keys: HashMap<(String, u32), usize>,
    log_public: HashSet<[u8; 32]>,
    witnesses: Vec<PolicyWitness>,
    witness_public: HashSet<[u8; 32]>,
    witness_keys: HashSet<(String, u32)>,
    groups: Vec<Group>,
    names: HashMap<String, Member>,
    members: HashSet<String>,
    quorum: Option<Quorum>,
}

impl Parser {
    fn define(&mut self, line: usize, name: &str, member: Member) -> Result<(), PolicyError> {
        if name == NONE || self.names.contains_key(name) {
            return Err(PolicyError::Redefined {
                line,
                name: name.to_owned(),
            });
        }
        self.names.insert(name.to_owned(), member);
        Ok(())
    }

    fn lookup(&self, line: usize, name: &str) -> Result<Member, PolicyError> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| PolicyError::Undefined {
                line,
                name: name.to_owned(),
            })
    }

    fn log(&mut self, line: usize, args: &[&str]) -> Result<(), PolicyError> {
        let (vkey, url) = match args {
            [vkey] => (vkey, None),
            [vkey, url] => (vkey, Some((*url).to_owned())),
            _ => {
                return Err(PolicyError::Syntax {
                    line,
                    reason: "a log line is `log <vkey> [<url>]`",
                });
            }
        };
        if self.logs.len() == MAX_POLICY_LOGS {
            return Err(PolicyError::Limit {
                line,
                limit: MAX_POLICY_LOGS,
            });
        }
        let verifier =
            Verifier::from_text(vkey).map_err(|source| PolicyError::Key { line, source })?;
        let id = (verifier.name().to_owned(), verifier.key_id());
        if !self.log_public.insert(*verifier.public_key()) || self.log_keys.contains_key(&id) {
            return Err(PolicyError::DuplicateKey { line });
        }
        self.log_keys.insert(id, self.logs.len());
        self.logs.push(PolicyLog { verifier, url });
        Ok(())
    }

    fn witness(&mut self, line: usize, args: &[&str]) -> Result<(), PolicyError> {
        let (name, vkey, url) = match args {
            [name, vkey] => (name, vkey, None),
            [name, vkey, url] => (name, vkey, Some((*url).to_owned())),
            _ => {
                return Err(PolicyError::Syntax {
                    line,
                    reason: "a witness line is `witness <name> <vkey> [<url>]`",
                });
            }
        };
        if self.witnesses.len() == MAX_POLICY_WITNESSES {
            return Err(PolicyError::Limit {
                line,
                limit: MAX_POLICY_WITNESSES,
            });
        }
        let verifier = CosignatureVerifier::from_text(vkey)
            .map_err(|source| PolicyError::Key { line, source })?;
        let id = (verifier.name().to_owned(), verifier.key_id());
        if !self.witness_public.insert(*verifier.public_key()) || !self.witness_keys.insert(id) {
            return Err(PolicyError::DuplicateKey { line });
        }
        self.define(line, name, Member::Witness(self.witnesses.len()))?;
        self.witnesses.push(PolicyWitness {
            name: (*name).to_owned(),
            verifier,
            url,
        });
        Ok(())
    }

    fn group(&mut self, line: usize, args: &[&str]) -> Result<(), PolicyError> {
        let [name, threshold, names @ ..] = args else {
            return Err(PolicyError::Syntax {
                line,
                reason: "a group line is `group <name> all|any|<k> <member>...`",
            });
        };
        if names.is_empty() {
            return Err(PolicyError::Syntax {
                line,
                reason: "a group needs at least one member",
            });
        }
        if self.groups.len() == MAX_POLICY_GROUPS {
            return Err(PolicyError::Limit {
                line,
                limit: MAX_POLICY_GROUPS,
            });
        }
        let threshold = match *threshold {
            "all" => names.len(),
            "any" => 1,
            k => crate::checkpoint::parse_decimal(k)
                .and_then(|k| usize::try_from(k).ok())
                .filter(|k| (1..=names.len()).contains(k))
                .ok_or(PolicyError::Threshold {
                    line,
                    members: names.len(),
                })?,
        };
        let mut members = Vec::with_capacity(names.len());
        for member in names {
            let resolved = self.lookup(line, member)?;
            // A name may be a member once in the whole policy, so each witness counts
            // towards the quorum one way only.
            if !self.members.insert((*member).to_owned()) {
                return Err(PolicyError::MemberTwice {
                    line,
                    name: (*member).to_owned(),
                });
            }
            members.push(resolved);
        }
        self.define(line, name, Member::Group(self.groups.len()))?;
        self.groups.push(Group {
            name: (*name).to_owned(),
            threshold,
            members,
        });
        Ok(())
    }

    fn quorum(&mut self, line: usize, args: &[&str]) -> Result<(), PolicyError> {
        let [name] = args else {
            return Err(PolicyError::Syntax {
                line,
                reason: "a quorum line is `quorum <name>`",
            });
        };
        if self.quorum.is_some() {
            return Err(PolicyError::SecondQuorum { line });
        }
        let quorum = if *name == NONE {
            Quorum::None
        } else {
            Quorum::Of(self.lookup(line, name)?)
        };
        self.quorum = Some(quorum);
        Ok(())
    }
}

impl Policy {
    /// Parses a policy file. Lines end in a newline (a last line without one is taken too);
    /// items are separated by spaces and tabs; blank lines and lines starting with `#` are
    /// skipped. The only control characters allowed are tab and newline. Names are compared
    /// as exact strings; unlike the spec, which allows any octets with the high bit set, the
    /// file must be UTF-8.
    pub fn parse(input: &[u8]) -> Result<Self, PolicyError> {
        if input.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge);
        }
        let input = std::str::from_utf8(input).map_err(|_| PolicyError::Utf8)?;
        let mut parser = Parser::default();
        for (number, text) in input.split('\n').enumerate() {
            let line = number + 1;
            if let Some(byte) = text
                .bytes()
                .find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            {
                return Err(PolicyError::Character { line, byte });
            }
            let items = items(text);
            let Some((keyword, args)) = items.split_first() else {
                continue;
            };
            match *keyword {
                k if k.starts_with('#') => {}
                "log" => parser.log(line, args)?,
                "witness" => parser.witness(line, args)?,
                "group" => parser.group(line, args)?,
                "quorum" => parser.quorum(line, args)?,
                _ => {
                    return Err(PolicyError::Syntax {
                        line,
                        reason: "the keyword is not log, witness, group or quorum",
                    });
                }
            }
        }
        let quorum = parser.quorum.ok_or(PolicyError::NoQuorum)?;
        Ok(Self {
            logs: parser.logs,
            log_keys: parser.log_keys,
            witnesses: parser.witnesses,
            groups: parser.groups,
            quorum,
        })
    }

    /// The log lines, in order.
    #[must_use]
    pub fn logs(&self) -> &[PolicyLog] {
        &self.logs
    }

    /// The witness lines, in order.
    #[must_use]
    pub fn witnesses(&self) -> &[PolicyWitness] {
        &self.witnesses
    }

    /// Whether the witnesses marked in `cosigned` (by position) meet the quorum. Groups only
    /// name earlier groups, so one pass in order settles them all.
    fn quorum_met(&self, cosigned: &[bool]) -> bool {
        let mut met = Vec::with_capacity(self.groups.len());
        let holds = |member: &Member, met: &[bool]| match *member {
            Member::Witness(i) => cosigned[i],
            Member::Group(i) => met[i],
        };
        for group in &self.groups {
            let count = group.members.iter().filter(|m| holds(m, &met)).count();
            met.push(count >= group.threshold);
        }
        match &self.quorum {
            Quorum::None => true,
            Quorum::Of(member) => holds(member, &met),
        }
    }

    /// Applies the policy to a checkpoint note: it must carry a valid signature of a log in
    /// the policy whose key name is the checkpoint's origin, and valid cosignatures of
    /// witnesses meeting the quorum. Every signature line from a key the policy knows, log or
    /// witness, must verify, or the note is refused (as c2sp.org/signed-note advises); lines
    /// from unknown keys are ignored.
    pub fn verify_checkpoint(&self, note: &[u8]) -> Result<SignedCheckpoint, VerifyError> {
        self.verify_note(Note::parse(note)?)
    }

    /// [`Policy::verify_checkpoint`] for a note already parsed.
    pub fn verify_note(&self, note: Note) -> Result<SignedCheckpoint, VerifyError> {
        let mut logs: Vec<usize> = note
            .signatures()
            .iter()
            .filter_map(|line| self.log_keys.get(&(line.name().to_owned(), line.key_id())))
            .copied()
            .collect();
        logs.sort_unstable();
        logs.dedup();
        if logs.is_empty() {
            return Err(VerifyError::NoLog);
        }
        for &i in &logs {
            note.verify(&self.logs[i].verifier)?;
        }
        let checkpoint = Checkpoint::parse_body(note.text())?;
        if let Some(&other) = logs
            .iter()
            .find(|&&i| self.logs[i].verifier.name() != checkpoint.origin())
        {
            return Err(CheckpointError::OriginMismatch {
                origin: checkpoint.origin().to_owned(),
                key_name: self.logs[other].verifier.name().to_owned(),
            }
            .into());
        }
        self.check_quorum(&note, &checkpoint)?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Checks only the witnesses: every cosignature line from a witness of the policy must
    /// verify against `checkpoint`, and those present must meet the quorum. For a caller
    /// that has checked the log's signature itself (a policy may list no logs when the log is
    /// known from context).
    pub fn check_quorum(&self, note: &Note, checkpoint: &Checkpoint) -> Result<(), VerifyError> {
        let mut cosigned = Vec::with_capacity(self.witnesses.len());
        for witness in &self.witnesses {
            match witness.verifier.verify_in_note(note, checkpoint) {
                Ok(_) => cosigned.push(true),
                Err(CosignatureError::Missing { .. }) => cosigned.push(false),
                Err(e) => return Err(e.into()),
            }
        }
        if self.quorum_met(&cosigned) {
            Ok(())
        } else {
            Err(VerifyError::Quorum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::sign_checkpoint;
    use crate::cosignature::add_cosignature;
    use crate::keys::{Cosigner, Signer};

    const ORIGIN: &str = "example.test/recorder/host/h1";

    fn witness(i: u8) -> Cosigner {
        Cosigner::from_seed(&format!("w{i}.example"), [i; 32]).unwrap()
    }

    fn log() -> Signer {
        Signer::from_seed(ORIGIN, [200; 32]).unwrap()
    }

    /// The spec's example structure: two groups of three, 2-of-3 and any, both required.
    fn example_policy() -> String {
        let w: Vec<String> = (1..=6).map(|i| witness(i).verifier().to_text()).collect();
        format!(
            "# The spec's example\nlog {}\n\nwitness X1 {}\nwitness X2 {}\nwitness X3 {}\n\
             group X-witnesses 2 X1 X2 X3\n\n  witness Y1\t{}\nwitness Y2 {} https://y2.example/\n\
             witness Y3 {}\ngroup Y-witnesses any Y1 Y2 Y3\n\ngroup X-and-Y all X-witnesses Y-witnesses\nquorum X-and-Y",
            log().verifier().to_text(),
            w[0],
            w[1],
            w[2],
            w[3],
            w[4],
            w[5]
        )
    }

    fn cosigned_by(witnesses: &[u8]) -> Vec<u8> {
        let checkpoint = Checkpoint::new(ORIGIN, 7, [5; 32]).unwrap();
        let mut note = sign_checkpoint(&log(), &checkpoint).unwrap();
        for &i in witnesses {
            add_cosignature(&mut note, &witness(i), &checkpoint, 1_700_000_000).unwrap();
        }
        note.to_text().into_bytes()
    }

    #[test]
    fn quorum_of_the_spec_example() {
        let policy = Policy::parse(example_policy().as_bytes()).unwrap();
        assert_eq!(policy.logs().len(), 1);
        assert_eq!(policy.witnesses().len(), 6);
        assert_eq!(
            policy.witnesses()[4].url.as_deref(),
            Some("https://y2.example/")
        );
        for (cosigners, ok) in [
            (&[1, 2, 4][..], true),
            (&[1, 3, 5, 6][..], true),
            (&[1, 2, 3][..], false),
            (&[1, 4, 5, 6][..], false),
            (&[][..], false),
        ] {
            let result = policy.verify_checkpoint(&cosigned_by(cosigners));
            assert_eq!(result.is_ok(), ok, "{cosigners:?}: {result:?}");
            if !ok {
                assert_eq!(result, Err(VerifyError::Quorum));
            }
        }
        // A failing cosignature from a known witness rejects the note.
        let mut bad = cosigned_by(&[1, 2, 4]);
        let at = bad.len() - 10;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            policy.verify_checkpoint(&bad),
            Err(VerifyError::Cosignature(_))
        ));
        // Unknown cosigners are ignored.
        policy
            .verify_checkpoint(&cosigned_by(&[1, 2, 4, 9]))
            .unwrap();
    }

    #[test]
    fn logs_and_origins() {
        let open_policy = format!("log {}\nquorum none\n", log().verifier().to_text());
        let policy = Policy::parse(open_policy.as_bytes()).unwrap();
        let opened = policy.verify_checkpoint(&cosigned_by(&[])).unwrap();
        assert_eq!(opened.checkpoint.size(), 7);
        // No log in the policy signed it.
        let stranger = Signer::from_seed(ORIGIN, [201; 32]).unwrap();
        let other = format!("log {}\nquorum none\n", stranger.verifier().to_text());
        assert_eq!(
            Policy::parse(other.as_bytes())
                .unwrap()
                .verify_checkpoint(&cosigned_by(&[])),
            Err(VerifyError::NoLog)
        );
        // A log key whose name is not the origin.
        let misnamed = Signer::from_seed("example.test/recorder/host/h2", [200; 32]).unwrap();
        let checkpoint = Checkpoint::new(ORIGIN, 1, [0; 32]).unwrap();
        let note = sign_checkpoint(&misnamed, &checkpoint).unwrap().to_text();
        let policy = format!("log {}\nquorum none\n", misnamed.verifier().to_text());
        assert!(matches!(
            Policy::parse(policy.as_bytes())
                .unwrap()
                .verify_checkpoint(note.as_bytes()),
            Err(VerifyError::Checkpoint(
                CheckpointError::OriginMismatch { .. }
            ))
        ));
    }

    #[test]
    fn malformed_policies() {
        let l = log().verifier().to_text();
        let w1 = witness(1).verifier().to_text();
        let w2 = witness(2).verifier().to_text();
        let bad = [
            String::new(),
            format!("log {l}\n"),
            format!("log {l}\nlog {l}\nquorum none\n"),
            format!("log {l} url extra\nquorum none\n"),
            format!("log {w1}\nquorum none\n"),
            format!("witness a {l}\nquorum none\n"),
            format!("witness a {w1}\nwitness a {w2}\nquorum a\n"),
            format!("witness a {w1}\nwitness b {w1}\nquorum a\n"),
            format!("witness none {w1}\nquorum none\n"),
            format!("witness a {w1}\nquorum b\n"),
            format!("witness a {w1}\nquorum a\nquorum a\n"),
            format!("witness a {w1}\ngroup g 2 a\nquorum g\n"),
            format!("witness a {w1}\ngroup g 0 a\nquorum g\n"),
            format!("witness a {w1}\ngroup g 01 a\nquorum g\n"),
            format!("witness a {w1}\ngroup g any\nquorum g\n"),
            format!("witness a {w1}\ngroup g any a a\nquorum g\n"),
            format!("witness a {w1}\ngroup g any a\ngroup h any a\nquorum g\n"),
            format!("witness a {w1}\ngroup g any b\nwitness b {w2}\nquorum g\n"),
            format!("witness a {w1}\ngroup g any none\nquorum g\n"),
            format!("witness a {w1}\ngroup a any a\nquorum a\n"),
            format!("witness a {w1}\r\nquorum a\n"),
            format!("witness a {w1}\nquorum a\x7f\n"),
            format!("witness a {w1}\nquorum a\nkey {w2}\n"),
            format!("witness a {w1}\nquorum\n"),
            "quorum none\n\u{0}".to_owned(),
        ];
        for policy in &bad {
            assert!(Policy::parse(policy.as_bytes()).is_err(), "{policy:?}");
        }
        assert_eq!(Policy::parse(b"\xff"), Err(PolicyError::Utf8));
        // Comments, whitespace and a missing final newline are fine.
        Policy::parse(format!("  # c\n\t\nwitness a {w1} https://a.example\nquorum\ta").as_bytes())
            .unwrap();
    }

    #[test]
    fn hostile_policies_never_panic() {
        let text = example_policy();
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let _ = Policy::parse(&bytes[..cut]);
        }
        for i in (0..bytes.len()).step_by(3) {
            let mut b = bytes.to_vec();
            b[i] ^= 0x21;
            let _ = Policy::parse(&b);
        }
    }
}
