//! c2sp.org/tlog-checkpoint: the body `origin\nsize\nbase64(root)\n[extension lines]`, signed
//! as a c2sp.org/signed-note by the log.

use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::keys::{Signer, Verifier};
use crate::merkle::Hash;
use crate::note::{Note, NoteError};

/// Why a checkpoint body or note was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("the checkpoint body does not end in a newline")]
    BodyEnd,
    #[error("the checkpoint body has fewer than three lines")]
    TooFewLines,
    #[error("a checkpoint line is empty or holds a control character")]
    BadLine,
    #[error("the tree size is not a decimal number without leading zeros that fits 64 bits")]
    Size,
    #[error("the root hash is not standard padded base64 of 32 bytes")]
    Root,
    #[error("the checkpoint's origin {origin:?} is not the key name {key_name:?}")]
    OriginMismatch { origin: String, key_name: String },
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// A decimal `u64` written as the C2SP formats write numbers: ASCII digits, no sign, no
/// leading zeros unless the number is zero.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// A hash written in standard padded base64.
pub(crate) fn parse_hash(s: &str) -> Option<Hash> {
    STANDARD.decode(s).ok()?.try_into().ok()
}

/// A line of a checkpoint body: non-empty, and no newline or other control character.
fn check_line(line: &str) -> Result<(), CheckpointError> {
    if line.is_empty() || line.bytes().any(|b| b < 0x20) {
        return Err(CheckpointError::BadLine);
    }
    Ok(())
}

/// A log's tree head: the origin naming the log, the tree size and the RFC 6962 root, and
/// any extension lines (opaque; the spec does not recommend them, and this project uses
/// none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    size: u64,
    root: Hash,
    extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines; the origin must be a non-empty line.
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        check_line(origin)?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions: Vec::new(),
        })
    }

    /// The same checkpoint with `extensions` as its extension lines, each a non-empty line.
    pub fn with_extensions(mut self, extensions: Vec<String>) -> Result<Self, CheckpointError> {
        for line in &extensions {
            check_line(line)?;
        }
        self.extensions = extensions;
        Ok(self)
    }

    /// The log's identity; in this project the log key's name.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of leaves in the tree.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 6962 root of the tree.
    #[must_use]
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// The extension lines, without their newlines.
    #[must_use]
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The note text: `origin\nsize\nbase64(root)\n` then each extension line and a newline.
    #[must_use]
    pub fn to_body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for line in &self.extensions {
            body.push_str(line);
            body.push('\n');
        }
        body
    }

    /// Parses a note text strictly: at least three non-empty lines, each newline-terminated;
    /// the size in canonical decimal; the root in standard padded base64 of exactly 32 bytes.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let lines = body.strip_suffix('\n').ok_or(CheckpointError::BodyEnd)?;
        let mut lines = lines.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::TooFewLines);
        };
        check_line(origin)?;
        let size = parse_decimal(size).ok_or(CheckpointError::Size)?;
        let root = parse_hash(root).ok_or(CheckpointError::Root)?;
        let extensions = lines
            .map(|line| check_line(line).map(|()| line.to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// A checkpoint and the note it was read from, whose signature lines (the log's, and any
/// cosignatures) a witness or exporter passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The parsed body.
    pub checkpoint: Checkpoint,
    /// The note, with every signature line it came with.
    pub note: Note,
}

/// The log's signed note of `checkpoint`.
pub fn sign_checkpoint(signer: &Signer, checkpoint: &Checkpoint) -> Result<Note, CheckpointError> {
    let mut note = Note::new(checkpoint.to_body())?;
    note.sign(signer)?;
    Ok(note)
}

/// Opens a checkpoint note from the log whose key is `verifier`: the note must parse, carry a
/// valid signature by that key (and no failing one), and its body must be a checkpoint whose
/// origin is the key's name. The project names each host's log key by its origin, so a
/// host's key cannot vouch for another host's log.
pub fn open_checkpoint(
    note: &[u8],
    verifier: &Verifier,
) -> Result<SignedCheckpoint, CheckpointError> {
    let note = Note::parse(note)?;
    note.verify(verifier)?;
    let checkpoint = Checkpoint::parse_body(note.text())?;
    if checkpoint.origin != verifier.name() {
        return Err(CheckpointError::OriginMismatch {
            origin: checkpoint.origin,
            key_name: verifier.name().to_owned(),
        });
    }
    Ok(SignedCheckpoint { checkpoint, note })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::EMPTY_ROOT;

    const ORIGIN: &str = "example.test/recorder/host/h1";

    #[test]
    fn c2sp_checkpoint_example_body() {
        let body =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let checkpoint = Checkpoint::parse_body(body).unwrap();
        assert_eq!(checkpoint.origin(), "example.com/behind-the-sofa");
        assert_eq!(checkpoint.size(), 20_852_163);
        assert_eq!(checkpoint.root()[..3], [0x0a, 0xc5, 0x18]);
        assert_eq!(checkpoint.to_body(), body);
        // The spec's example note parses, its body is that checkpoint.
        let note = format!(
            "{body}\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        );
        assert_eq!(Note::parse(note.as_bytes()).unwrap().text(), body);
    }

    #[test]
    fn bodies_round_trip_with_extensions() {
        let checkpoint = Checkpoint::new(ORIGIN, 0, EMPTY_ROOT)
            .unwrap()
            .with_extensions(vec!["ext one".into(), "— two".into()])
            .unwrap();
        let body = checkpoint.to_body();
        assert!(body.ends_with("\next one\n— two\n"));
        assert_eq!(Checkpoint::parse_body(&body).unwrap(), checkpoint);
        assert!(
            Checkpoint::new(ORIGIN, 1, EMPTY_ROOT)
                .unwrap()
                .with_extensions(vec![String::new()])
                .is_err()
        );
        assert!(Checkpoint::new("", 1, EMPTY_ROOT).is_err());
        assert!(Checkpoint::new("a\nb", 1, EMPTY_ROOT).is_err());
    }

    #[test]
    fn strict_bodies() {
        // 0xfb encodes as "+/v7", so the URL-safe alphabet differs.
        let root = STANDARD.encode([0xfbu8; 32]);
        let good = format!("{ORIGIN}\n10\n{root}\n");
        Checkpoint::parse_body(&good).unwrap();
        let bad = [
            format!("{ORIGIN}\n10\n{root}"),
            format!("{ORIGIN}\n10\n"),
            format!("{ORIGIN}\n010\n{root}\n"),
            format!("{ORIGIN}\n+10\n{root}\n"),
            format!("{ORIGIN}\n-1\n{root}\n"),
            format!("{ORIGIN}\n1 0\n{root}\n"),
            format!("{ORIGIN}\n\n{root}\n"),
            format!("{ORIGIN}\n18446744073709551616\n{root}\n"),
            format!("{ORIGIN}\n10\n{}\n", root.trim_end_matches('=')),
            format!("{ORIGIN}\n10\n{}\n", STANDARD.encode([7u8; 31])),
            format!("{ORIGIN}\n10\n{}\n", STANDARD.encode([7u8; 33])),
            format!(
                "{ORIGIN}\n10\n{}\n",
                root.replace('+', "-").replace('/', "_")
            ),
            format!("\n10\n{root}\n"),
            format!("{ORIGIN}\n10\n{root}\n\n"),
            format!("{ORIGIN}\n10\n{root}\next\r\n"),
            format!("{ORIGIN}\r\n10\n{root}\n"),
        ];
        for body in &bad {
            assert!(Checkpoint::parse_body(body).is_err(), "{body:?}");
        }
        assert_eq!(
            Checkpoint::parse_body(&format!("{ORIGIN}\n18446744073709551615\n{root}\n"))
                .unwrap()
                .size(),
            u64::MAX
        );
        assert_eq!(
            Checkpoint::parse_body(&format!("{ORIGIN}\n0\n{root}\n"))
                .unwrap()
                .size(),
            0
        );
    }

    #[test]
    fn sign_and_open() {
        let signer = Signer::from_seed(ORIGIN, [1; 32]).unwrap();
        let checkpoint = Checkpoint::new(ORIGIN, 5, [2; 32]).unwrap();
        let note = sign_checkpoint(&signer, &checkpoint).unwrap();
        let text = note.to_text();
        let opened = open_checkpoint(text.as_bytes(), &signer.verifier()).unwrap();
        assert_eq!(opened.checkpoint, checkpoint);
        assert_eq!(opened.note, note);

        // Another host's key, even signing a checkpoint naming this origin, is refused.
        let other = Signer::from_seed("example.test/recorder/host/h2", [1; 32]).unwrap();
        let forged = sign_checkpoint(&other, &checkpoint).unwrap().to_text();
        assert!(matches!(
            open_checkpoint(forged.as_bytes(), &other.verifier()),
            Err(CheckpointError::OriginMismatch { .. })
        ));
        assert!(matches!(
            open_checkpoint(forged.as_bytes(), &signer.verifier()),
            Err(CheckpointError::Note(NoteError::NotSigned { .. }))
        ));
        // A changed size breaks the signature.
        let tampered = text.replacen("\n5\n", "\n6\n", 1);
        assert!(matches!(
            open_checkpoint(tampered.as_bytes(), &signer.verifier()),
            Err(CheckpointError::Note(NoteError::BadSignature { .. }))
        ));
    }

    #[test]
    fn hostile_checkpoints_never_panic() {
        let signer = Signer::from_seed(ORIGIN, [1; 32]).unwrap();
        let text = sign_checkpoint(&signer, &Checkpoint::new(ORIGIN, 1234, [9; 32]).unwrap())
            .unwrap()
            .to_text();
        let bytes = text.as_bytes();
        let verifier = signer.verifier();
        for cut in 0..bytes.len() {
            assert!(open_checkpoint(&bytes[..cut], &verifier).is_err());
            if let Ok(s) = std::str::from_utf8(&bytes[..cut]) {
                let _ = Checkpoint::parse_body(s);
            }
        }
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x41;
            let _ = open_checkpoint(&b, &verifier);
        }
    }
}
