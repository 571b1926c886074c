//! One end-to-end vector with documented inputs, so an independent verifier can check its
//! implementation against this one. Every expected string below was computed separately in
//! Python (`hashlib`, `base64` and `cryptography`'s Ed25519) from the C2SP texts and RFC 6962
//! alone; Ed25519 is deterministic, so the signatures are fixed too.
//!
//! Inputs:
//! - log key: name `example.test/recorder/host/h1`, Ed25519 seed bytes 0x00, 0x01, …, 0x1f;
//! - witness key: name `example.test/recorder/witness`, seed bytes 0x20, 0x21, …, 0x3f;
//! - entries: record hashes `SHA-256("record 0")` … `SHA-256("record 4")` (ASCII, no
//!   newline), so the tree has 5 leaves;
//! - the witness cosigns at POSIX time 1700000000;
//! - the tlog-proof is for index 3, with extra data `record 3`.

use sha2::{Digest, Sha256};
use tlog::{
    Checkpoint, CompactRange, Cosigner, Hash, Policy, Signer, TlogProof, Verifier, add_cosignature,
    inclusion_proof, leaf_hash, open_checkpoint, sign_checkpoint,
};

const LOG: &str = "example.test/recorder/host/h1";
const WITNESS: &str = "example.test/recorder/witness";
const LOG_VKEY: &str =
    "example.test/recorder/host/h1+0b8adb7a+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";
const LOG_SKEY: &str = "PRIVATE+KEY+example.test/recorder/host/h1+0b8adb7a+AQABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";
const WITNESS_VKEY: &str =
    "example.test/recorder/witness+5f477e74+BCmsuuFBvMrwsi4alNNNC8c2HlJtC/4SyJeUvJMilm3X";
const ROOT_HEX: &str = "08d9e8022bad91b74b5fb2b737c335f4e9877e7c9c016bbbee2121550f90098e";
const NOTE: &str = "example.test/recorder/host/h1\n5\nCNnoAiutkbdLX7K3N8M19OmHfnycAWu77iEhVQ+QCY4=\n\n\
\u{2014} example.test/recorder/host/h1 C4rbegNVbjlWtBF7PYrhOh21GjFSjDE8Ug/MspHQgj4rZFevToA/Gz/2QL/M3ztHdZNwmm1/3t8CwmxzzuFQJFVBQwg=\n\
\u{2014} example.test/recorder/witness X0d+dAAAAABlU/EA8AParCPPbP1svbUlWGfGB1S1DFhHJb5ejnlZN/X13bPJN7uk2serqGgAgFwxKNnLe1cMJGHq52/jKhoU9u8QAQ==\n";
const PROOF: &str = "c2sp.org/tlog-proof@v1\nextra cmVjb3JkIDM=\nindex 3\n\
I37MnO+ukedzU74PCNjnkvv4EQDtzp3mOSTasvPhLcg=\n\
mP4+Wq72tYiVceZwHoNXoLXVn2WehR36L/p9UeYaeng=\n\
IhHIa4gdJnUAY64TeEUkXdMwHBnuPVLKRHuA3HESETI=\n\n";

fn seed(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + i as u8)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn leaves() -> Vec<Hash> {
    (0..5)
        .map(|i| leaf_hash(&Sha256::digest(format!("record {i}")).into()))
        .collect()
}

#[test]
fn documented_vector() {
    let log = Signer::from_seed(LOG, seed(0x00)).unwrap();
    let witness = Cosigner::from_seed(WITNESS, seed(0x20)).unwrap();
    assert_eq!(log.verifier().to_text(), LOG_VKEY);
    assert_eq!(log.to_text(), LOG_SKEY);
    assert_eq!(witness.verifier().to_text(), WITNESS_VKEY);

    let leaves = leaves();
    let mut range = CompactRange::new();
    for leaf in &leaves {
        range.append(*leaf).unwrap();
    }
    assert_eq!(hex(&range.root()), ROOT_HEX);

    let checkpoint = Checkpoint::new(LOG, 5, range.root()).unwrap();
    let mut note = sign_checkpoint(&log, &checkpoint).unwrap();
    add_cosignature(&mut note, &witness, &checkpoint, 1_700_000_000).unwrap();
    assert_eq!(note.to_text(), NOTE);

    let proof = inclusion_proof(3, 5, &mut &leaves[..]).unwrap();
    let bundle = TlogProof::new(3, proof, note)
        .unwrap()
        .with_extra(b"record 3".to_vec());
    assert_eq!(bundle.to_text(), format!("{PROOF}{NOTE}"));

    // And the other way: from the published texts alone.
    let verifier = Verifier::from_text(LOG_VKEY).unwrap();
    let opened = open_checkpoint(NOTE.as_bytes(), &verifier).unwrap();
    assert_eq!(opened.checkpoint, checkpoint);
    let policy = Policy::parse(
        format!("log {LOG_VKEY}\nwitness collector {WITNESS_VKEY}\nquorum collector\n").as_bytes(),
    )
    .unwrap();
    let parsed = TlogProof::parse(format!("{PROOF}{NOTE}").as_bytes()).unwrap();
    assert_eq!(parsed.extra(), b"record 3");
    let proven = parsed.verify(&leaves[3], &policy).unwrap();
    assert_eq!(proven.checkpoint.size(), 5);
    assert!(parsed.verify(&leaves[2], &policy).is_err());
}
