//! Evidence bundles checked by two verifiers that share no code: the `bundle` crate's and
//! `tests/verify_bundle.py`, written from docs/evidence.md and docs/chain.md alone. A real
//! bundle must pass both, and one changed byte in any of its parts must fail both. Without
//! python3 and its `cryptography` and `grpcio-tools` packages the Python half is skipped,
//! except under `CI=true`, where that is a failure.

use std::{fs, time::SystemTime};

use tests::{
    collector::scratch_dir,
    python::{generate_protos, python_ready, python_verify},
};

/// Where `needle` first occurs in `haystack` after `from`, plus `offset`.
fn position(haystack: &[u8], from: usize, needle: &str, offset: usize) -> usize {
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle:?} after byte {from}"))
        + from
        + needle.len()
        + offset
}

#[test]
fn both_verifiers_accept_a_bundle_and_refuse_any_changed_part() {
    let dir = scratch_dir("bundle");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let evidence = bundle::testing::build(&dir, now).unwrap();
    let json = evidence.bundle.to_json();
    let (file, ca) = (dir.join("bundle.json"), dir.join("ca.pem"));
    fs::write(&file, &json).unwrap();
    fs::write(&ca, &evidence.ca_pem).unwrap();

    let verified = bundle::verify(&json, &evidence.ca_pem).unwrap();
    assert_eq!(verified.records, evidence.bundle.records.len());
    let python = python_ready().then(|| generate_protos(&dir));
    if let Some(protos) = &python {
        let out = python_verify(&file, &ca, protos);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("valid bundle: "), "{stdout}");
        assert!(
            stdout.contains(&format!("{} records", verified.records)),
            "{stdout}"
        );
    }

    let origin = &evidence.bundle.origin;
    let records = position(&json, 0, r#""records":["#, 0);
    let third = position(&json, records, r#""chain_id""#, 0);
    let third = position(&json, third + 1, r#""chain_id""#, 0);
    let third = position(&json, third + 1, r#""chain_id""#, 0);
    let proof = position(
        &json,
        third,
        r#""proof":"c2sp.org/tlog-proof@v1\nindex "#,
        0,
    );
    let targets = [
        ("an event", position(&json, third, r#""event":""#, 7)),
        ("a prev", position(&json, third, r#""prev":""#, 20)),
        ("a proof hash", position(&json, proof, r"\n", 10)),
        (
            "a checkpoint signature",
            position(&json, proof, &format!("\u{2014} {origin} "), 30),
        ),
        (
            "a cosignature",
            position(&json, proof, "/recorder/witness/c1 ", 60),
        ),
        (
            "a certificate",
            position(&json, 0, r"-----BEGIN CERTIFICATE-----\n", 200),
        ),
        ("the policy", position(&json, 0, r#""policy":"log "#, 70)),
        (
            "the session",
            position(&json, 0, r#""session":"host-1:"#, 0),
        ),
    ];
    for (what, at) in targets {
        let mut changed = json.clone();
        // A letter's case: base64 stays base64, so the change reaches what it encodes.
        changed[at] ^= if changed[at].is_ascii_alphabetic() {
            0x20
        } else {
            0x01
        };
        let rust = bundle::verify(&changed, &evidence.ca_pem);
        assert!(
            rust.is_err(),
            "{what} (byte {at}) changed: the crate accepted it"
        );
        let Some(protos) = &python else { continue };
        let file = dir.join(format!("changed-{at}.json"));
        fs::write(&file, &changed).unwrap();
        let out = python_verify(&file, &ca, protos);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what} (byte {at}) changed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("invalid bundle: "), "{what}: {stdout}");
        eprintln!("{what} changed: {} / {}", rust.unwrap_err(), stdout.trim());
    }
}
