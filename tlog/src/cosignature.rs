//! c2sp.org/tlog-cosignature, the Ed25519 `cosignature/v1` type: a witness signs
//! `cosignature/v1\ntime <seconds>\n` followed by the checkpoint body, and the note signature
//! is the 8-byte big-endian timestamp followed by the 64-byte Ed25519 signature.

use crate::checkpoint::Checkpoint;
use crate::keys::{CosignatureVerifier, Cosigner};
use crate::note::{Note, NoteError, NoteSignature};

/// The largest timestamp the spec allows, 2^63 - 1.
pub const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// The length of a `cosignature/v1` signature after the key ID: timestamp and signature.
const TIMESTAMPED_LEN: usize = 8 + 64;

/// Why a cosignature could not be made or did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CosignatureError {
    #[error("the timestamp {0} is above 2^63 - 1")]
    Timestamp(u64),
    #[error("the signature line is by {name}+{key_id:08x}, not by this witness")]
    NotThisKey { name: String, key_id: u32 },
    #[error("a cosignature/v1 signature is 72 bytes, not {0}")]
    Length(usize),
    #[error("no cosignature by {name}+{key_id:08x}")]
    Missing { name: String, key_id: u32 },
    #[error("the cosignature by {name}+{key_id:08x} does not verify")]
    BadSignature { name: String, key_id: u32 },
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// The signed message: header line, timestamp line, then the whole checkpoint body
/// (extension lines included).
fn message(checkpoint: &Checkpoint, time: u64) -> Vec<u8> {
    let mut message = format!("cosignature/v1\ntime {time}\n").into_bytes();
    message.extend_from_slice(checkpoint.to_body().as_bytes());
    message
}

/// Splits a `timestamped_signature` into its timestamp and Ed25519 signature.
fn split_timestamped(signature: &[u8]) -> Result<(u64, &[u8]), CosignatureError> {
    if signature.len() != TIMESTAMPED_LEN {
        return Err(CosignatureError::Length(signature.len()));
    }
    let (time, signature) = signature.split_at(8);
    let mut bytes = [0; 8];
    bytes.copy_from_slice(time);
    Ok((u64::from_be_bytes(bytes), signature))
}

impl Cosigner {
    /// The witness's cosignature of `checkpoint` at `time` (POSIX seconds), as a note
    /// signature line to add to the checkpoint's note. tlog-witness forbids a zero time in
    /// what a witness returns; the caller passes its clock.
    pub fn cosign(
        &self,
        checkpoint: &Checkpoint,
        time: u64,
    ) -> Result<NoteSignature, CosignatureError> {
        if time > MAX_TIMESTAMP {
            return Err(CosignatureError::Timestamp(time));
        }
        let mut signature = Vec::with_capacity(TIMESTAMPED_LEN);
        signature.extend_from_slice(&time.to_be_bytes());
        signature.extend_from_slice(&self.sign_raw(&message(checkpoint, time)));
        Ok(NoteSignature::new(self.name(), self.key_id(), signature)?)
    }
}

impl CosignatureVerifier {
    /// Verifies one cosignature line of `checkpoint` by this witness, giving its timestamp.
    pub fn verify_cosignature(
        &self,
        checkpoint: &Checkpoint,
        signature: &NoteSignature,
    ) -> Result<u64, CosignatureError> {
        if !signature.is_by(self.name(), self.key_id()) {
            return Err(CosignatureError::NotThisKey {
                name: signature.name().to_owned(),
                key_id: signature.key_id(),
            });
        }
        let (time, ed25519) = split_timestamped(signature.signature())?;
        if time > MAX_TIMESTAMP {
            return Err(CosignatureError::Timestamp(time));
        }
        if !self.verify_raw(&message(checkpoint, time), ed25519) {
            return Err(CosignatureError::BadSignature {
                name: self.name().to_owned(),
                key_id: self.key_id(),
            });
        }
        Ok(time)
    }

    /// Finds and verifies this witness's cosignatures in `note`, the note of `checkpoint`:
    /// every line with this key's name and ID must verify (a failing one rejects the note, as
    /// c2sp.org/signed-note advises), and there must be one. Gives the latest timestamp.
    pub fn verify_in_note(
        &self,
        note: &Note,
        checkpoint: &Checkpoint,
    ) -> Result<u64, CosignatureError> {
        let mut latest = None;
        for line in note
            .signatures()
            .iter()
            .filter(|s| s.is_by(self.name(), self.key_id()))
        {
            let time = self.verify_cosignature(checkpoint, line)?;
            latest = latest.max(Some(time));
        }
        latest.ok_or_else(|| CosignatureError::Missing {
            name: self.name().to_owned(),
            key_id: self.key_id(),
        })
    }
}

/// Adds `cosigner`'s cosignature of `checkpoint` at `time` to `note`, the checkpoint's note,
/// replacing an earlier one by the same key.
pub fn add_cosignature(
    note: &mut Note,
    cosigner: &Cosigner,
    checkpoint: &Checkpoint,
    time: u64,
) -> Result<(), CosignatureError> {
    note.add_signature(cosigner.cosign(checkpoint, time)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};

    use super::*;
    use crate::checkpoint::{open_checkpoint, sign_checkpoint};
    use crate::keys::Signer;

    /// c2sp.org/tlog-cosignature's example line: its key ID and timestamp decode as the spec's
    /// example message says (`time 1679315147`). The witness's public key is not published,
    /// so the signature itself cannot be checked.
    #[test]
    fn c2sp_example_line_decodes() {
        let note = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";
        let note = Note::parse(note.as_bytes()).unwrap();
        let line = &note.signatures()[1];
        assert_eq!(line.name(), "witness.example.com/w1");
        assert_eq!(line.key_id(), 0x8d66_cf3f);
        let (time, _) = split_timestamped(line.signature()).unwrap();
        assert_eq!(time, 1_679_315_147);
        // A test vector of transparency-dev/formats likewise.
        let raw = STANDARD
            .decode("ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==")
            .unwrap();
        assert_eq!(split_timestamped(&raw[4..]).unwrap().0, 1_727_964_367);
    }

    #[test]
    fn cosign_and_verify() {
        let log = Signer::from_seed("example.test/recorder/host/h1", [1; 32]).unwrap();
        let witness = Cosigner::from_seed("example.test/recorder/collector", [2; 32]).unwrap();
        let checkpoint = Checkpoint::new(log.name(), 3, [4; 32]).unwrap();
        let mut note = sign_checkpoint(&log, &checkpoint).unwrap();
        add_cosignature(&mut note, &witness, &checkpoint, 1_700_000_000).unwrap();
        let text = note.to_text();
        let opened = open_checkpoint(text.as_bytes(), &log.verifier()).unwrap();
        let verifier = witness.verifier();
        assert_eq!(
            verifier.verify_in_note(&opened.note, &opened.checkpoint),
            Ok(1_700_000_000)
        );
        // Re-cosigning replaces the line.
        add_cosignature(&mut note, &witness, &checkpoint, 1_700_000_005).unwrap();
        assert_eq!(note.signatures().len(), 2);
        assert_eq!(
            verifier.verify_in_note(&note, &checkpoint),
            Ok(1_700_000_005)
        );

        // Against another checkpoint, another witness key, or with the time changed, it fails.
        let other = Checkpoint::new(log.name(), 4, [4; 32]).unwrap();
        assert!(matches!(
            verifier.verify_in_note(&note, &other),
            Err(CosignatureError::BadSignature { .. })
        ));
        let stranger = Cosigner::from_seed("example.test/recorder/collector", [3; 32]).unwrap();
        assert!(matches!(
            stranger.verifier().verify_in_note(&note, &checkpoint),
            Err(CosignatureError::Missing { .. })
        ));
        let line = note.signatures()[1].clone();
        let mut bytes = line.signature().to_vec();
        bytes[7] ^= 1;
        let retimed = NoteSignature::new(line.name(), line.key_id(), bytes).unwrap();
        assert!(matches!(
            verifier.verify_cosignature(&checkpoint, &retimed),
            Err(CosignatureError::BadSignature { .. })
        ));
        let short = NoteSignature::new(line.name(), line.key_id(), vec![0; 71]).unwrap();
        assert_eq!(
            verifier.verify_cosignature(&checkpoint, &short),
            Err(CosignatureError::Length(71))
        );
        assert!(matches!(
            verifier.verify_cosignature(&checkpoint, &note.signatures()[0]),
            Err(CosignatureError::NotThisKey { .. })
        ));
        assert_eq!(
            witness.cosign(&checkpoint, MAX_TIMESTAMP + 1),
            Err(CosignatureError::Timestamp(MAX_TIMESTAMP + 1))
        );
    }
}
