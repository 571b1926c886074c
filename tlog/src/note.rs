//! c2sp.org/signed-note: text, a blank line, then signature lines
//! `— <key name> base64(key ID || signature)`.

use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::keys::{KeyError, Signer, Verifier, check_name};

/// The largest note accepted, in bytes. The spec asks verifiers to accept at least 16
/// signatures, and post-quantum ones approach 5 kB each; checkpoints and Ed25519 cosignatures
/// are far smaller.
pub const MAX_NOTE_BYTES: usize = 256 * 1024;

/// The most signature lines a note may carry (the cap of Go's `sumdb/note`).
pub const MAX_SIGNATURES: usize = 100;

/// The signature line prefix: an em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a note was refused or did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("the note is larger than {MAX_NOTE_BYTES} bytes")]
    TooLarge,
    #[error("the note is not valid UTF-8")]
    Utf8,
    #[error("the note holds a control character other than newline")]
    ControlCharacter,
    #[error("the note text does not end in a newline")]
    TextEnd,
    #[error("the note has no blank line before its signatures")]
    NoSignatureBlock,
    #[error("the note's signature lines do not end in a newline")]
    SignatureBlockEnd,
    #[error("a signature line is not `— name base64`")]
    SignatureLine,
    #[error("signature key name: {0}")]
    Name(#[from] KeyError),
    #[error("a signature is not standard padded base64 of a key ID and at least one byte")]
    SignatureEncoding,
    #[error("the note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    #[error("no signature by {name}+{key_id:08x}")]
    NotSigned { name: String, key_id: u32 },
    #[error("the signature by {name}+{key_id:08x} does not verify")]
    BadSignature { name: String, key_id: u32 },
}

/// One signature line: who signed (key name and ID) and the signature bytes after the ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    name: String,
    key_id: u32,
    signature: Vec<u8>,
}

impl NoteSignature {
    /// A signature by `name`+`key_id`; the name must be a valid key name and the signature
    /// non-empty.
    pub fn new(name: &str, key_id: u32, signature: Vec<u8>) -> Result<Self, NoteError> {
        check_name(name)?;
        if signature.is_empty() {
            return Err(NoteError::SignatureEncoding);
        }
        Ok(Self {
            name: name.to_owned(),
            key_id,
            signature,
        })
    }

    /// The signer's key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signer's key ID.
    #[must_use]
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The signature bytes, without the key ID.
    #[must_use]
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The line, `— name base64(key ID || signature)\n`.
    #[must_use]
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, STANDARD.encode(raw))
    }

    /// The length of [`Self::to_line`], without building it.
    fn line_len(&self) -> usize {
        SIGNATURE_PREFIX.len()
            + self.name.len()
            + 1
            + (4 + self.signature.len()).div_ceil(3) * 4
            + 1
    }

    /// Parses one line without its newline.
    fn parse_line(line: &str) -> Result<Self, NoteError> {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or(NoteError::SignatureLine)?;
        let (name, b64) = rest.split_once(' ').ok_or(NoteError::SignatureLine)?;
        check_name(name)?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::SignatureEncoding)?;
        let Some((id, signature)) = raw.split_first_chunk::<4>() else {
            return Err(NoteError::SignatureEncoding);
        };
        Self::new(name, u32::from_be_bytes(*id), signature.to_vec())
    }

    /// Whether this line claims to be by `name`+`key_id`.
    #[must_use]
    pub fn is_by(&self, name: &str, key_id: u32) -> bool {
        self.name == name && self.key_id == key_id
    }
}

/// Checks the text rules: newline-terminated, and no control character but newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge);
    }
    if !text.ends_with('\n') {
        return Err(NoteError::TextEnd);
    }
    if text.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(NoteError::ControlCharacter);
    }
    Ok(())
}

/// A signed note: its text (ending in a newline) and signatures, verified or not. Built only
/// through checks, so [`Note::to_text`] always gives a note [`Note::parse`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

impl Note {
    /// A note with `text` and no signatures yet (it needs one before it can be written out).
    pub fn new(text: String) -> Result<Self, NoteError> {
        check_text(&text)?;
        Ok(Self {
            text,
            signatures: Vec::new(),
        })
    }

    /// The signed text, including its final newline.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signature lines, in order, verified or not.
    #[must_use]
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds a signature line, replacing any from the same key name and ID: one key signs a
    /// note once (as Go's `sumdb/note` does when re-signing). The note must stay within the
    /// limits [`Note::parse`] applies.
    pub fn add_signature(&mut self, signature: NoteSignature) -> Result<(), NoteError> {
        let same = self
            .signatures
            .iter()
            .position(|s| s.is_by(&signature.name, signature.key_id));
        let kept = self.encoded_len() - same.map_or(0, |i| self.signatures[i].line_len());
        if kept + signature.line_len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge);
        }
        match same {
            Some(i) => self.signatures[i] = signature,
            None if self.signatures.len() == MAX_SIGNATURES => {
                return Err(NoteError::TooManySignatures);
            }
            None => self.signatures.push(signature),
        }
        Ok(())
    }

    /// The length of [`Note::to_text`].
    fn encoded_len(&self) -> usize {
        self.text.len()
            + 1
            + self
                .signatures
                .iter()
                .map(NoteSignature::line_len)
                .sum::<usize>()
    }

    /// Signs the text with `signer` (plain Ed25519 over the text) and adds the line.
    pub fn sign(&mut self, signer: &Signer) -> Result<(), NoteError> {
        let signature = signer.sign_raw(self.text.as_bytes()).to_vec();
        self.add_signature(NoteSignature::new(
            signer.name(),
            signer.key_id(),
            signature,
        )?)
    }

    /// Checks the note is signed by `verifier`: every line with its name and key ID must
    /// verify, and there must be one. Other lines are ignored, as the spec requires.
    pub fn verify(&self, verifier: &Verifier) -> Result<(), NoteError> {
        let mut found = false;
        for line in self
            .signatures
            .iter()
            .filter(|s| s.is_by(verifier.name(), verifier.key_id()))
        {
            if !verifier.verify_raw(self.text.as_bytes(), &line.signature) {
                return Err(NoteError::BadSignature {
                    name: line.name.clone(),
                    key_id: line.key_id,
                });
            }
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(NoteError::NotSigned {
                name: verifier.name().to_owned(),
                key_id: verifier.key_id(),
            })
        }
    }

    /// Parses a note. The text is everything up to the last blank line; then one or more
    /// signature lines. Bounded by [`MAX_NOTE_BYTES`] and [`MAX_SIGNATURES`]. Signatures are
    /// not verified here.
    pub fn parse(input: &[u8]) -> Result<Self, NoteError> {
        if input.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge);
        }
        let input = std::str::from_utf8(input).map_err(|_| NoteError::Utf8)?;
        if input.bytes().any(|b| b < 0x20 && b != b'\n') {
            return Err(NoteError::ControlCharacter);
        }
        let split = input.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
        let (text, block) = (&input[..=split], &input[split + 2..]);
        let lines = block
            .strip_suffix('\n')
            .ok_or(NoteError::SignatureBlockEnd)?;
        let mut signatures = Vec::new();
        for line in lines.split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            signatures.push(NoteSignature::parse_line(line)?);
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note as text: the text, a blank line, the signature lines.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.encoded_len());
        out.push_str(&self.text);
        out.push('\n');
        for signature in &self.signatures {
            out.push_str(&signature.to_line());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    /// Known answers from the tests of Go's `golang.org/x/mod/sumdb/note`: Ed25519 is
    /// deterministic, so signing must give their bytes exactly.
    #[test]
    fn go_sumdb_note_sign_and_open() {
        let signer = Signer::from_text(PETER_SKEY).unwrap();
        let mut note = Note::new(TEXT.to_owned()).unwrap();
        note.sign(&signer).unwrap();
        assert_eq!(note.to_text(), format!("{TEXT}\n{PETER_SIG}"));
        // Signing again replaces the line.
        note.sign(&signer).unwrap();
        assert_eq!(note.signatures().len(), 1);

        let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let parsed = Note::parse(both.as_bytes()).unwrap();
        assert_eq!(parsed.text(), TEXT);
        assert_eq!(parsed.signatures().len(), 2);
        assert_eq!(parsed.signatures()[1].key_id(), 0xaf0c_fe78);
        assert_eq!(parsed.to_text(), both);
        parsed
            .verify(&Verifier::from_text(PETER_VKEY).unwrap())
            .unwrap();
        parsed
            .verify(&Verifier::from_text(ENOCH_VKEY).unwrap())
            .unwrap();
        // A key that signed nothing here.
        let other = Signer::from_seed("PeterNeumann", [5; 32])
            .unwrap()
            .verifier();
        assert!(matches!(
            parsed.verify(&other),
            Err(NoteError::NotSigned { .. })
        ));
    }

    /// c2sp.org/signed-note's own example.
    #[test]
    fn c2sp_signed_note_example() {
        let note = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        let verifier = Verifier::from_text(
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        )
        .unwrap();
        Note::parse(note.as_bytes())
            .unwrap()
            .verify(&verifier)
            .unwrap();
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let verifier = Verifier::from_text(PETER_VKEY).unwrap();
        let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
        let parsed = Note::parse(bad.as_bytes()).unwrap();
        assert!(matches!(
            parsed.verify(&verifier),
            Err(NoteError::BadSignature { .. })
        ));
        // A good and a bad line by the same key: the bad one rejects the note.
        let mixed = format!(
            "{TEXT}\n{PETER_SIG}{}ABCD{}",
            &PETER_SIG[..60],
            &PETER_SIG[60..]
        );
        let parsed = Note::parse(mixed.as_bytes()).unwrap();
        assert!(parsed.verify(&verifier).is_err());
        let changed = format!("{}\n{PETER_SIG}", TEXT.replace("problem", "trouble"));
        assert!(
            Note::parse(changed.as_bytes())
                .unwrap()
                .verify(&verifier)
                .is_err()
        );
    }

    #[test]
    fn malformed_notes_are_refused() {
        let bad: Vec<String> = vec![
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            format!("\x01{TEXT}\n{PETER_SIG}"),
            format!("{TEXT}\r\n{PETER_SIG}"),
            format!(
                "{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
            ),
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            format!("{TEXT}\n- PeterNeumann AAAAAAA=\n"),
            format!("{TEXT}\n\u{2014} PeterNeumann AAAA\n"),
            format!("{TEXT}\n\u{2014} PeterNeumann AAAAAA\n"),
            format!("{TEXT}\n\u{2014} PeterNeumann AAAAAA==\n"),
            format!("{TEXT}\n\u{2014} a+b AAAAAAA=\n"),
            format!("{TEXT}\n\u{2014}  AAAAAAA=\n"),
            format!("{TEXT}\n\u{2014} PeterNeumann\n"),
            format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1)),
            "x".repeat(MAX_NOTE_BYTES + 1),
        ];
        for note in &bad {
            assert!(Note::parse(note.as_bytes()).is_err(), "{note:?}");
        }
        assert_eq!(Note::parse(b"\xff\n\n"), Err(NoteError::Utf8));
        assert!(
            Note::parse(format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES)).as_bytes()).is_ok()
        );
        for text in ["", "no newline", "tab\there\n", "nul\0\n"] {
            assert!(Note::new(text.to_owned()).is_err(), "{text:?}");
        }
        // Built notes keep to the same limits.
        let mut note = Note::new(TEXT.to_owned()).unwrap();
        let huge = NoteSignature::new("a", 1, vec![0; MAX_NOTE_BYTES]).unwrap();
        assert_eq!(note.add_signature(huge), Err(NoteError::TooLarge));
        for i in 0..MAX_SIGNATURES as u32 {
            note.add_signature(NoteSignature::new("a", i, vec![1; 64]).unwrap())
                .unwrap();
        }
        let one_more = NoteSignature::new("a", u32::MAX, vec![1; 64]).unwrap();
        assert_eq!(
            note.add_signature(one_more),
            Err(NoteError::TooManySignatures)
        );
        // Replacing one is still fine.
        note.add_signature(NoteSignature::new("a", 7, vec![2; 64]).unwrap())
            .unwrap();
        assert_eq!(note.to_text().len(), note.encoded_len());
        assert_eq!(Note::parse(note.to_text().as_bytes()).unwrap(), note);
    }

    /// Every prefix of a valid note, and every single-byte change, parses or fails without
    /// panicking.
    #[test]
    fn hostile_notes_never_panic() {
        let note = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        let bytes = note.as_bytes();
        for cut in 0..bytes.len() {
            let _ = Note::parse(&bytes[..cut]);
        }
        let verifier = Verifier::from_text(PETER_VKEY).unwrap();
        for i in 0..bytes.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut b = bytes.to_vec();
                b[i] = b[i].wrapping_add(delta);
                let parsed = Note::parse(&b);
                // Verifying is slow in debug builds: a sample is enough.
                if let (Ok(n), 1, 0) = (parsed, delta, i % 4) {
                    let _ = n.verify(&verifier);
                }
            }
        }
    }

    /// The text is split from the signatures at the last blank line; the text may hold blank
    /// lines of its own.
    #[test]
    fn text_may_hold_blank_lines() {
        let signer = Signer::from_seed("a.example", [3; 32]).unwrap();
        let mut note = Note::new("one\n\ntwo\n\n".to_owned()).unwrap();
        note.sign(&signer).unwrap();
        let parsed = Note::parse(note.to_text().as_bytes()).unwrap();
        assert_eq!(parsed, note);
        parsed.verify(&signer.verifier()).unwrap();
    }
}
