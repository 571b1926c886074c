//! The pure core of the per-host transparency log (issue 11), shared by the agent (which
//! appends and signs checkpoints), the collector (which witnesses and cosigns them), the
//! operator tool (which exports offline proofs) and the tests. No I/O, no clocks: callers
//! pass times in and store bytes out.
//!
//! Each host has one RFC 6962 Merkle log whose entries are its 32-byte chain record hashes
//! (docs/chain.md). The log's origin, its key name and the host's identity are one string,
//! `<deployment>/recorder/host/<host id>`.
//!
//! # Formats
//!
//! Everything here is byte-exact to the specifications named. The C2SP texts followed are
//! those of the C2SP repository's main branch of July 2026: signed-note (as tagged v1.0.0,
//! plus wording), tlog-checkpoint (v1.0.0 plus the ML-DSA recommendation, not used here),
//! tlog-cosignature (the Ed25519 `cosignature/v1` type is as tagged v1.0.1), tlog-witness
//! (later than the v1.0.0 tag: a same-size checkpoint with another root is now 422, not 409),
//! tlog-proof (`@v1`, untagged) and tlog-policy (untagged). RFC 9162's own text was not at
//! hand: its §2.1 algorithms are implemented as that RFC gives them and checked against the
//! RFC 6962 definitions (PATH, PROOF, MTH) recomputed independently, and against the
//! Certificate Transparency sample-tree values.
//!
//! - **Merkle tree** (RFC 6962 §2.1, RFC 9162 §2.1.1): leaf hash `SHA-256(0x00 || entry)`
//!   with the entry the 32-byte record hash; node hash `SHA-256(0x01 || left || right)`; the
//!   empty tree's root `SHA-256("")`; a tree of `n > 1` leaves splits at the largest power of
//!   two below `n`. See [`merkle`].
//! - **Inclusion and consistency proofs** (RFC 9162 §2.1.3, §2.1.4): lists of hashes,
//!   generated per §2.1.3.1/§2.1.4.1 and verified with the algorithms of §2.1.3.2/§2.1.4.2.
//!   RFC 9162's verification is for `0 < old < new`; the edges are as tlog-witness has them:
//!   an old size of zero takes an empty proof (and the empty tree's root), as do equal sizes
//!   (whose roots must then be equal).
//!   See [`proof`].
//! - **Signed note** (c2sp.org/signed-note): UTF-8 text ending in `\n`, with no control
//!   characters but `\n`; a blank line; one or more lines `— <key name> <base64(key ID ||
//!   signature)>\n`, the dash being U+2014 and base64 the standard padded alphabet (RFC 4648
//!   §4). The text is split off at the *last* blank line. Key names are non-empty, without
//!   Unicode spaces or `+`. Key ID = first 4 bytes, big-endian, of `SHA-256(name || 0x0A ||
//!   type || public key)`. Type 0x01 is Ed25519 over the text (RFC 8032). Signatures from
//!   unknown keys are kept and ignored; every line from a known key must verify. Limits:
//!   [`MAX_NOTE_BYTES`], [`MAX_SIGNATURES`]. See [`note`].
//! - **Keys**: verifier keys (vkeys) `<name>+<8 lowercase hex key ID>+<base64(type ||
//!   32-byte public key)>` (c2sp.org/signed-note). Signer keys
//!   `PRIVATE+KEY+<name>+<hex key ID>+<base64(type || 32-byte seed)>`: *not in C2SP*; this is
//!   the form of Go's `golang.org/x/mod/sumdb/note`, which C2SP's note format comes from, used
//!   here as is for type 0x01 and with type byte 0x04 for witness keys (the project's own
//!   extension). Seeds come from the operating system's random source. Signatures are
//!   checked with RFC 8032's strict rules (`ed25519-dalek`'s `verify_strict`: canonical
//!   encodings, no small-order key or R), which C2SP does not spell out; honest signers
//!   never produce what they refuse. See [`keys`].
//! - **Checkpoint** (c2sp.org/tlog-checkpoint): the note text `<origin>\n<size>\n<base64
//!   root>\n` then any extension lines, each non-empty and `\n`-terminated; the size is
//!   decimal without leading zeros (`0` for the empty tree); the root is 32 bytes. This
//!   project signs checkpoints with type 0x01 keys named by the origin, and
//!   [`open_checkpoint`] refuses a checkpoint whose origin is not the key's name. See
//!   [`checkpoint`].
//! - **Cosignature** (c2sp.org/tlog-cosignature, Ed25519 `cosignature/v1`): a note signature
//!   line by the witness with key ID type byte 0x04; the signature is an 8-byte big-endian
//!   POSIX timestamp (at most 2^63 − 1) followed by the 64-byte Ed25519 signature of
//!   `cosignature/v1\ntime <timestamp>\n` followed by the whole checkpoint body. See
//!   [`cosignature`].
//! - **Witness rules** (c2sp.org/tlog-witness, `add-checkpoint`), as a pure decision: the old
//!   size must not exceed the new (400), must equal the size last cosigned for the origin or
//!   zero (409, with that size), a size-zero checkpoint must have the empty root (422), and
//!   the consistency proof must verify (422); a second root for the cosigned size is a fork.
//!   The HTTP request and response bodies themselves are not implemented here. See
//!   [`witness`].
//! - **Proof bundle** (c2sp.org/tlog-proof v1): `c2sp.org/tlog-proof@v1\n`, optionally
//!   `extra <base64>\n`, `index <decimal>\n`, one base64 hash per line (leaf side first), a
//!   blank line, then the checkpoint note verbatim. See [`tlog_proof`].
//! - **Trust policy** (c2sp.org/tlog-policy): lines `log <vkey> [<url>]`, `witness <name>
//!   <vkey> [<url>]`, `group <name> all|any|<k> <member>...` and exactly one `quorum
//!   <name>|none`; `#` comments; names defined before use; each name a group member at most
//!   once in the whole policy. Here log vkeys must be type 0x01 and witness vkeys type 0x04,
//!   and the file must be UTF-8 (the spec allows opaque high-bit octets). See [`policy`].
//!
//! # Not here
//!
//! ML-DSA-44 cosignatures and subtree signing (tlog-cosignature's other type, tlog-witness's
//! `sign-subtree`), ECDSA and RFC 6962 note signature types, and the tlog-witness HTTP bodies.

pub mod checkpoint;
pub mod cosignature;
pub mod keys;
pub mod merkle;
pub mod note;
pub mod policy;
pub mod proof;
pub mod tlog_proof;
pub mod witness;

#[cfg(test)]
mod testutil;

pub use checkpoint::{
    Checkpoint, CheckpointError, SignedCheckpoint, open_checkpoint, sign_checkpoint,
};
pub use cosignature::{CosignatureError, add_cosignature};
pub use keys::{CosignatureVerifier, Cosigner, KeyError, Signer, Verifier};
pub use merkle::{
    CompactRange, CompactRangeError, EMPTY_ROOT, Hash, leaf_hash, node_hash, root_of,
};
pub use note::{MAX_NOTE_BYTES, MAX_SIGNATURES, Note, NoteError, NoteSignature};
pub use policy::{Policy, PolicyError, VerifyError};
pub use proof::{
    ProofError, ProveError, Subtrees, consistency_proof, inclusion_proof, root_from_inclusion,
    verify_consistency, verify_inclusion,
};
pub use tlog_proof::{TlogProof, TlogProofError};
pub use witness::{Evidence, Invalid, Verdict, WitnessState, decide};
