//! Helpers shared by the unit tests.

use sha2::{Digest, Sha256};

use crate::merkle::{Hash, leaf_hash};

/// `n` distinct leaf hashes.
pub fn leaves(n: usize) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(&Sha256::digest((i as u64).to_be_bytes()).into()))
        .collect()
}

/// Hashes arbitrary leaf data, as RFC 6962 does; this crate's own leaves are 32 bytes.
pub fn data_leaf(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn unhex32(s: &str) -> Hash {
    unhex(s).try_into().unwrap()
}

/// The eight leaves of the RFC 6962 sample tree used by the Certificate Transparency
/// reference tests.
pub fn sample_tree() -> Vec<Hash> {
    let data: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    data.iter().map(|d| data_leaf(d)).collect()
}
