//! Named Ed25519 keys of c2sp.org/signed-note: key IDs, verifier keys (vkeys) and the
//! `PRIVATE+KEY+` signer key text of Go's `golang.org/x/mod/sumdb/note`.
//!
//! One key type serves two signature types, told apart by the type byte that goes into the
//! key ID and the vkey: [`Signer`]/[`Verifier`] (0x01, plain Ed25519 over the note text, used
//! by logs for checkpoints) and [`Cosigner`]/[`CosignatureVerifier`] (0x04, c2sp.org/
//! tlog-cosignature's timestamped `cosignature/v1`, used by witnesses).

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature type byte of plain Ed25519 note signatures (c2sp.org/signed-note).
pub const SIG_TYPE_ED25519: u8 = 0x01;

/// The signature type byte of Ed25519 `cosignature/v1` signatures (c2sp.org/tlog-cosignature).
pub const SIG_TYPE_COSIGNATURE_V1: u8 = 0x04;

/// The prefix of signer key text: not part of C2SP, which defines only vkeys, but the form
/// Go's `sumdb/note` (and tools built on it) read and write.
const PRIVATE_PREFIX: &str = "PRIVATE+KEY+";

/// Why a key or key text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key name {0:?} is empty or holds a space, a plus or a control character")]
    Name(String),
    #[error("the key text is not name+keyid+key")]
    Shape,
    #[error("the key ID is not 8 lowercase hex digits")]
    KeyIdText,
    #[error("the key material is not standard padded base64")]
    Base64,
    #[error("the key has signature type {found:#04x}, not {expected:#04x}")]
    SignatureType { expected: u8, found: u8 },
    #[error("the key material is {0} bytes, not 32")]
    KeyLength(usize),
    #[error("the public key is not a valid Ed25519 point")]
    PublicKey,
    #[error("the key ID {stated:08x} does not match the key, whose ID is {computed:08x}")]
    KeyIdMismatch { stated: u32, computed: u32 },
    #[error("the operating system gave no random bytes: {0}")]
    Random(String),
}

/// Checks a key name: c2sp.org/signed-note requires it non-empty and free of Unicode spaces
/// and plus; ASCII control characters are refused too, since no note may hold them.
pub fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == '+' || c.is_whitespace() || c < ' ')
    {
        return Err(KeyError::Name(name.to_owned()));
    }
    Ok(())
}

/// `SHA-256(name || 0x0A || signature type || public key)[:4]` as a big-endian `u32`: the key
/// ID c2sp.org/signed-note recommends, and tlog-cosignature requires for type 0x04.
#[must_use]
pub fn key_id(name: &str, sig_type: u8, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', sig_type]);
    h.update(public_key);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Parses `name+hexkeyid+base64(type || key)`, checking the name, the type and that the ID is
/// the one the name and key give.
fn parse_key_text(text: &str, sig_type: u8) -> Result<(String, u32, [u8; 32]), KeyError> {
    // The name holds no plus, so the first two separate the parts; base64 may hold more.
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(KeyError::Shape);
    };
    check_name(name)?;
    if id_hex.len() != 8
        || !id_hex
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(KeyError::KeyIdText);
    }
    let stated = u32::from_str_radix(id_hex, 16).map_err(|_| KeyError::KeyIdText)?;
    let raw = STANDARD.decode(key_b64).map_err(|_| KeyError::Base64)?;
    let Some((&found, key)) = raw.split_first() else {
        return Err(KeyError::KeyLength(0));
    };
    if found != sig_type {
        return Err(KeyError::SignatureType {
            expected: sig_type,
            found,
        });
    }
    let key: [u8; 32] = key.try_into().map_err(|_| KeyError::KeyLength(key.len()))?;
    Ok((name.to_owned(), stated, key))
}

fn key_text(name: &str, id: u32, sig_type: u8, key: &[u8; 32]) -> String {
    let mut material = Vec::with_capacity(33);
    material.push(sig_type);
    material.extend_from_slice(key);
    format!("{name}+{id:08x}+{}", STANDARD.encode(material))
}

/// A named Ed25519 signing key of signature type `TYPE` (see [`Signer`] and [`Cosigner`]).
#[derive(Clone)]
pub struct NamedSigner<const TYPE: u8> {
    name: String,
    key: SigningKey,
    key_id: u32,
}

/// A log's checkpoint signing key: plain Ed25519 note signatures, type 0x01.
pub type Signer = NamedSigner<SIG_TYPE_ED25519>;

/// A witness's cosigning key: `cosignature/v1`, type 0x04. C2SP's tlog-cosignature requires a
/// distinct key per cosigner, and this type keeps a witness key from signing plain notes.
pub type Cosigner = NamedSigner<SIG_TYPE_COSIGNATURE_V1>;

/// The seed is secret: only the name and key ID are shown.
impl<const TYPE: u8> std::fmt::Debug for NamedSigner<TYPE> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedSigner")
            .field("name", &self.name)
            .field("type", &TYPE)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl<const TYPE: u8> NamedSigner<TYPE> {
    /// A new key named `name`, its seed 32 bytes from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Self::from_seed(name, seed)
    }

    /// The key whose RFC 8032 private key (seed) is `seed`.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        let key_id = key_id(name, TYPE, key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_owned(),
            key,
            key_id,
        })
    }

    /// The RFC 8032 seed, for storing the key.
    #[must_use]
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key name, which signature lines carry.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID, which signature lines carry after the name.
    #[must_use]
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching public key.
    #[must_use]
    pub fn verifier(&self) -> NamedVerifier<TYPE> {
        NamedVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            key_id: self.key_id,
        }
    }

    /// `PRIVATE+KEY+name+hexkeyid+base64(type || seed)`. Go's `sumdb/note` form for type 0x01;
    /// for type 0x04 the same shape with that type byte, which C2SP does not define.
    #[must_use]
    pub fn to_text(&self) -> String {
        format!(
            "{PRIVATE_PREFIX}{}",
            key_text(&self.name, self.key_id, TYPE, &self.seed())
        )
    }

    /// Parses [`Self::to_text`], checking the key ID against the key it derives.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let rest = text.strip_prefix(PRIVATE_PREFIX).ok_or(KeyError::Shape)?;
        let (name, stated, seed) = parse_key_text(rest, TYPE)?;
        let signer = Self::from_seed(&name, seed)?;
        if signer.key_id != stated {
            return Err(KeyError::KeyIdMismatch {
                stated,
                computed: signer.key_id,
            });
        }
        Ok(signer)
    }

    /// A raw Ed25519 signature over `message`.
    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// A named Ed25519 public key of signature type `TYPE` (see [`Verifier`] and
/// [`CosignatureVerifier`]).
#[derive(Clone, PartialEq, Eq)]
pub struct NamedVerifier<const TYPE: u8> {
    name: String,
    key: VerifyingKey,
    key_id: u32,
}

/// A log's public key, for its checkpoint signatures.
pub type Verifier = NamedVerifier<SIG_TYPE_ED25519>;

/// A witness's public key, for its `cosignature/v1` cosignatures.
pub type CosignatureVerifier = NamedVerifier<SIG_TYPE_COSIGNATURE_V1>;

impl<const TYPE: u8> std::fmt::Debug for NamedVerifier<TYPE> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl<const TYPE: u8> NamedVerifier<TYPE> {
    /// The key named `name` whose RFC 8032 public key is `public_key`.
    pub fn from_public_key(name: &str, public_key: &[u8; 32]) -> Result<Self, KeyError> {
        check_name(name)?;
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| KeyError::PublicKey)?;
        Ok(Self {
            name: name.to_owned(),
            key,
            key_id: key_id(name, TYPE, public_key),
        })
    }

    /// Parses a vkey, `name+hexkeyid+base64(type || public key)` (c2sp.org/signed-note,
    /// "Verifier keys"), checking the type byte and that the key ID is the computed one.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let (name, stated, key) = parse_key_text(text, TYPE)?;
        let verifier = Self::from_public_key(&name, &key)?;
        if verifier.key_id != stated {
            return Err(KeyError::KeyIdMismatch {
                stated,
                computed: verifier.key_id,
            });
        }
        Ok(verifier)
    }

    /// The vkey text.
    #[must_use]
    pub fn to_text(&self) -> String {
        key_text(&self.name, self.key_id, TYPE, self.key.as_bytes())
    }

    /// The key name, which signature lines carry.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID, which signature lines carry after the name.
    #[must_use]
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The RFC 8032 public key.
    #[must_use]
    pub fn public_key(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Checks a raw Ed25519 signature with RFC 8032's strict rules (canonical encodings, no
    /// small-order keys or points): a log or witness key is never such, so only a forger's
    /// input is refused.
    pub(crate) fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        self.key
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of the tests of Go's `golang.org/x/mod/sumdb/note`.
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

    #[test]
    fn go_sumdb_note_keys() {
        let signer = Signer::from_text(PETER_SKEY).unwrap();
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.key_id(), 0xc74f_20a3);
        assert_eq!(signer.to_text(), PETER_SKEY);
        assert_eq!(signer.verifier().to_text(), PETER_VKEY);
        let verifier = Verifier::from_text(PETER_VKEY).unwrap();
        assert_eq!(verifier, signer.verifier());
        // Every proper substring and every single-byte change is refused, as Go's tests do.
        let b = PETER_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let s = std::str::from_utf8(&b[i..j]).unwrap();
                    assert!(Verifier::from_text(s).is_err(), "{s}");
                }
            }
        }
        for i in 0..b.len() {
            let mut c = b.to_vec();
            c[i] = c[i].wrapping_add(1);
            if let Ok(s) = std::str::from_utf8(&c) {
                assert!(Verifier::from_text(s).is_err(), "{s}");
            }
        }
        for i in 0..PETER_SKEY.len() {
            let mut c = PETER_SKEY.as_bytes().to_vec();
            c[i] = c[i].wrapping_add(1);
            if let Ok(s) = std::str::from_utf8(&c) {
                assert!(Signer::from_text(s).is_err(), "{s}");
            }
        }
        // Wrong length with a matching key ID, and an unknown type with a matching key ID.
        assert!(
            Verifier::from_text(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
            )
            .is_err()
        );
        assert!(
            Verifier::from_text(
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
    }

    /// vkeys of other implementations: c2sp.org/signed-note's example (type 0x01), and a
    /// type 0x04 witness key from the tests of transparency-dev/formats, whose ID is computed
    /// with the cosignature type byte.
    #[test]
    fn published_vkeys() {
        Verifier::from_text(
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        )
        .unwrap();
        let witness = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2";
        let verifier = CosignatureVerifier::from_text(witness).unwrap();
        assert_eq!(verifier.to_text(), witness);
        assert_eq!(
            Verifier::from_text(witness),
            Err(KeyError::SignatureType {
                expected: 1,
                found: 4
            })
        );
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a+b", "a b", "a\tb", "a\u{2003}b", "a\nb", "a\u{1}"] {
            assert!(Signer::from_seed(bad, [1; 32]).is_err(), "{bad:?}");
        }
        Signer::from_seed("example.test/recorder/host/h-1", [1; 32]).unwrap();
    }

    #[test]
    fn generated_keys_round_trip() {
        let signer = Signer::generate("a.example/log").unwrap();
        let again = Signer::from_text(&signer.to_text()).unwrap();
        assert_eq!(again.seed(), signer.seed());
        assert_eq!(
            Signer::from_seed("a.example/log", signer.seed())
                .unwrap()
                .key_id(),
            signer.key_id()
        );
        let cosigner = Cosigner::generate("w.example").unwrap();
        let again = Cosigner::from_text(&cosigner.to_text()).unwrap();
        assert_eq!(again.verifier(), cosigner.verifier());
        assert!(Signer::from_text(&cosigner.to_text()).is_err());
        // The same seed under the two types gives two key IDs.
        let seed = [9; 32];
        assert_ne!(
            Signer::from_seed("n", seed).unwrap().key_id(),
            Cosigner::from_seed("n", seed).unwrap().key_id()
        );
        assert!(!format!("{signer:?}").contains(&STANDARD.encode(signer.seed())));
    }
}
