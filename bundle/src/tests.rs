use std::time::{Duration, SystemTime};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use pki::{Ca, Validity};
use tlog::{Cosigner, Signer};

use super::*;
use crate::testing::{Evidence, HOST, WITNESS, build};

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A bundle built now, and the directory its CA lives in.
fn evidence() -> (tempfile::TempDir, Evidence) {
    let dir = tempfile::tempdir().unwrap();
    let evidence = build(dir.path(), now_unix()).unwrap();
    (dir, evidence)
}

fn check(bundle: &Bundle, ca_pem: &str) -> Result<Verified, BundleError> {
    verify(&bundle.to_json(), ca_pem)
}

/// The record error of a failed verification, with the record's position.
fn record_error(result: Result<Verified, BundleError>) -> (usize, RecordError) {
    match result {
        Err(BundleError::Record { index, error, .. }) => (index, error),
        other => panic!("expected a record error, got {other:?}"),
    }
}

/// `text` with the base64 of its signature line by `name` changed: one bit of the byte at
/// `at` of the decoded key ID and signature.
fn flip_signature(proof: &str, name: &str, at: usize) -> String {
    let prefix = format!("\u{2014} {name} ");
    let line = proof
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("a line by {name} in {proof}"));
    let mut sig = STANDARD.decode(&line[prefix.len()..]).unwrap();
    sig[at] ^= 1;
    proof.replacen(line, &format!("{prefix}{}", STANDARD.encode(sig)), 1)
}

#[test]
fn a_built_bundle_verifies_and_round_trips() {
    let (_dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let json = bundle.to_json();
    assert_eq!(Bundle::from_json(&json).unwrap(), bundle);
    let verified = verify(&json, &ca_pem).unwrap();
    assert_eq!(verified.host, HOST);
    assert_eq!(verified.session, bundle.session);
    assert_eq!(verified.records, bundle.records.len());
    assert!(verified.records > 90, "{verified:?}");
    // The session spans the agent's restart: proven against both chains' checkpoints.
    assert_eq!(verified.checkpoints, 2);
    assert!(
        bundle
            .records
            .iter()
            .any(|r| r.chain_id.contains(":boot-0:"))
    );
    assert!(
        bundle
            .records
            .iter()
            .any(|r| r.chain_id.contains(":boot-1:"))
    );
    let text = String::from_utf8(json).unwrap();
    assert!(text.starts_with(r#"{"format":"recorder-evidence-bundle/v1","session":"host-1:7:"#));
}

#[test]
fn json_of_other_fields_or_shapes_is_refused() {
    let (_dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let json = String::from_utf8(bundle.to_json()).unwrap();
    let bad = [
        json.replacen(r#""host":"#, r#""extra":1,"host":"#, 1),
        json.replacen(r#""seq":"#, r#""note":"x","seq":"#, 1),
        json.replacen(r#""host":"host-1","#, "", 1),
        json.replacen(
            r#""host":"host-1","#,
            r#""host":"host-1","host":"host-1","#,
            1,
        ),
        json.replacen(r#""prev":""#, r#""prev":"="#, 1),
        json[..json.len() - 1].to_owned(),
    ];
    for bad in bad {
        assert!(
            matches!(verify(bad.as_bytes(), &ca_pem), Err(BundleError::Json(_))),
            "{}",
            &bad[..200]
        );
    }
    let mut other = bundle.clone();
    other.format = "recorder-evidence-bundle/v2".into();
    assert!(matches!(
        check(&other, &ca_pem),
        Err(BundleError::Format(_))
    ));
    let mut other = bundle;
    other.records.clear();
    assert!(matches!(
        check(&other, &ca_pem),
        Err(BundleError::NoRecords)
    ));
}

#[test]
fn changed_record_bytes_fail_their_inclusion() {
    let (_dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let mut event = bundle.clone();
    event.records[5].event[3] ^= 0x40;
    let mut prev = bundle.clone();
    prev.records[6].prev[31] ^= 1;
    let mut seq = bundle.clone();
    seq.records[7].seq += 1;
    let mut chain = bundle.clone();
    chain.records[8].chain_id.push('0');
    let mut hash = bundle.clone();
    let proof = &hash.records[9].proof;
    let line = proof.lines().nth(2).unwrap();
    let mut bytes = STANDARD.decode(line).unwrap();
    bytes[0] ^= 1;
    hash.records[9].proof = proof.replacen(line, &STANDARD.encode(bytes), 1);
    for (bundle, at) in [(event, 5), (prev, 6), (seq, 7), (chain, 8), (hash, 9)] {
        let (index, error) = record_error(check(&bundle, &ca_pem));
        assert_eq!(index, at);
        assert!(
            matches!(error, RecordError::Inclusion(ProofError::RootMismatch)),
            "{error}"
        );
    }
    let mut short = bundle;
    short.records[1].prev.pop();
    let (index, error) = record_error(check(&short, &ca_pem));
    assert_eq!(index, 1);
    assert!(matches!(error, RecordError::PrevLength(31)), "{error}");
}

#[test]
fn changed_signatures_fail_the_checkpoint() {
    let (_dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let origin = bundle.origin.clone();
    let witness = format!("{}/recorder/witness/{WITNESS}", &origin[..16]);
    let mut signature = bundle.clone();
    signature.records[4].proof = flip_signature(&signature.records[4].proof, &origin, 10);
    let (index, error) = record_error(check(&signature, &ca_pem));
    assert_eq!(index, 4);
    assert!(
        matches!(error, RecordError::Checkpoint(VerifyError::Note(_))),
        "{error}"
    );
    // A changed key ID makes the line a stranger's.
    let mut key_id = bundle.clone();
    key_id.records[4].proof = flip_signature(&key_id.records[4].proof, &origin, 0);
    let (_, error) = record_error(check(&key_id, &ca_pem));
    assert!(
        matches!(error, RecordError::UnknownSigner { .. }),
        "{error}"
    );
    let mut cosignature = bundle.clone();
    cosignature.records[4].proof = flip_signature(&cosignature.records[4].proof, &witness, 40);
    let (_, error) = record_error(check(&cosignature, &ca_pem));
    assert!(
        matches!(
            error,
            RecordError::Checkpoint(VerifyError::Cosignature(
                CosignatureError::BadSignature { .. }
            ))
        ),
        "{error}"
    );
    // The timestamp is signed too.
    let mut time = bundle.clone();
    time.records[4].proof = flip_signature(&time.records[4].proof, &witness, 11);
    let (_, error) = record_error(check(&time, &ca_pem));
    assert!(
        matches!(
            error,
            RecordError::Checkpoint(VerifyError::Cosignature(
                CosignatureError::BadSignature { .. }
            ))
        ),
        "{error}"
    );
    // Without its cosignature the checkpoint misses the quorum.
    let mut uncosigned = bundle.clone();
    let proof = &uncosigned.records[4].proof;
    let line = proof.lines().find(|l| l.contains(&witness)).unwrap();
    uncosigned.records[4].proof = proof.replacen(&format!("{line}\n"), "", 1);
    let (_, error) = record_error(check(&uncosigned, &ca_pem));
    assert!(
        matches!(error, RecordError::Checkpoint(VerifyError::Quorum)),
        "{error}"
    );
    // A signature by a key outside the policy is refused, not ignored.
    let mut stranger = bundle;
    let other = Signer::from_seed("someone", [9; 32]).unwrap();
    let mut note = tlog::TlogProof::parse(stranger.records[4].proof.as_bytes())
        .unwrap()
        .checkpoint()
        .clone();
    note.sign(&other).unwrap();
    let proof = tlog::TlogProof::parse(stranger.records[4].proof.as_bytes()).unwrap();
    stranger.records[4].proof = tlog::TlogProof::new(proof.index(), proof.proof().to_vec(), note)
        .unwrap()
        .to_text();
    let (_, error) = record_error(check(&stranger, &ca_pem));
    assert!(
        matches!(error, RecordError::UnknownSigner { ref name, .. } if name == "someone"),
        "{error}"
    );
}

#[test]
fn proofs_must_be_for_the_record_and_carry_nothing_unsigned() {
    let (_dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let mut index = bundle.clone();
    index.records[3].log_index += 1;
    let (_, error) = record_error(check(&index, &ca_pem));
    assert!(matches!(error, RecordError::Index { .. }), "{error}");
    let mut extra = bundle.clone();
    let proof = tlog::TlogProof::parse(extra.records[3].proof.as_bytes()).unwrap();
    extra.records[3].proof = proof.with_extra(b"unsigned".to_vec()).to_text();
    let (_, error) = record_error(check(&extra, &ca_pem));
    assert!(matches!(error, RecordError::Extra), "{error}");
    let mut garbled = bundle;
    garbled.records[3].proof = garbled.records[3].proof.replacen("index", "indx", 1);
    let (_, error) = record_error(check(&garbled, &ca_pem));
    assert!(matches!(error, RecordError::Proof(_)), "{error}");
}

#[test]
fn certificates_must_be_the_cas_and_strict() {
    let (dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let mut changed = bundle.clone();
    let pem = &changed.certificates[0];
    // A character in the middle of the base64 body: a changed DER byte.
    let at = pem.len() / 2;
    let c = if pem.as_bytes()[at] == b'A' { "B" } else { "A" };
    changed.certificates[0].replace_range(at..=at, c);
    match check(&changed, &ca_pem) {
        Err(BundleError::Certificate { index: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut crlf = bundle.clone();
    crlf.certificates[1] = crlf.certificates[1].replace('\n', "\r\n");
    match check(&crlf, &ca_pem) {
        Err(BundleError::Certificate { index: 1, reason }) => {
            assert!(reason.contains("strict PEM"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The same witness, certified by another CA.
    let other = Ca::init(&dir.path().join("other")).unwrap();
    let foreign = other
        .issue_witness(WITNESS, Validity::from_now(Duration::from_hours(1)))
        .unwrap();
    let mut foreign_bundle = bundle.clone();
    foreign_bundle.certificates[1] = foreign.cert_pem;
    match check(&foreign_bundle, &ca_pem) {
        Err(BundleError::Certificate { index: 1, reason }) => {
            assert!(reason.contains("not by the CA"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The whole bundle checked under another CA: its names are another deployment's.
    assert!(matches!(
        check(&bundle, other.cert_pem()),
        Err(BundleError::Origin { .. })
    ));
    // Another host's agent certificate.
    let ca = Ca::load(&dir.path().join("ca")).unwrap();
    let stranger = ca
        .issue_agent("host-2", Validity::from_now(Duration::from_hours(1)))
        .unwrap();
    let mut stranger_bundle = bundle;
    stranger_bundle
        .certificates
        .push(pki::CertInfo::from_pem(&stranger.cert_pem).unwrap().pem());
    match check(&stranger_bundle, &ca_pem) {
        Err(BundleError::Certificate { index: 2, reason }) => {
            assert!(reason.contains("neither"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_policy_must_be_certified_keys_with_a_witness() {
    let (_dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let lines: Vec<&str> = bundle.policy.lines().collect();
    assert_eq!(lines.len(), 4, "{}", bundle.policy);
    assert!(lines[0].starts_with(&format!("log {}+", bundle.origin)));
    assert_eq!(&lines[2..], ["group w any w1", "quorum w"]);

    // A changed byte of a key: its key ID no longer matches.
    let mut flipped = bundle.clone();
    let at = flipped.policy.find('\n').unwrap() - 5;
    let c = if flipped.policy.as_bytes()[at] == b'A' {
        "B"
    } else {
        "A"
    };
    flipped.policy.replace_range(at..=at, c);
    assert!(matches!(
        check(&flipped, &ca_pem),
        Err(BundleError::Policy(PolicyError::Key { line: 1, .. }))
    ));
    // A well-formed key of the right name that no certificate holds.
    let forged = Signer::from_seed(&bundle.origin, [5; 32]).unwrap();
    let mut uncertified = bundle.clone();
    uncertified.policy = policy(
        &[forged.verifier()],
        &[CosignatureVerifier::from_text(lines[1].split(' ').nth(2).unwrap()).unwrap()],
    );
    assert!(matches!(
        check(&uncertified, &ca_pem),
        Err(BundleError::PolicyKey { line: 1, .. })
    ));
    let renamed = Cosigner::from_seed("elsewhere/recorder/witness/c1", [6; 32]).unwrap();
    let mut witness = bundle.clone();
    witness.policy = format!("{}\n{}", lines[0], policy(&[], &[renamed.verifier()]));
    assert!(matches!(
        check(&witness, &ca_pem),
        Err(BundleError::PolicyKey { line: 2, .. })
    ));
    // The witness line removed: the quorum names nothing, or is none.
    let mut removed = bundle.clone();
    removed.policy = bundle.policy.replacen(&format!("{}\n", lines[1]), "", 1);
    assert!(matches!(
        check(&removed, &ca_pem),
        Err(BundleError::Policy(PolicyError::Undefined { .. }))
    ));
    let mut none = bundle.clone();
    none.policy = format!("{}\nquorum none\n", lines[0]);
    assert!(matches!(check(&none, &ca_pem), Err(BundleError::NoWitness)));
    // Another spelling of the same policy.
    let mut spelling = bundle;
    spelling.policy = spelling.policy.replacen("log ", "log\t", 1);
    assert!(matches!(
        check(&spelling, &ca_pem),
        Err(BundleError::PolicyForm)
    ));
}

#[test]
fn records_must_be_the_sessions_in_log_order() {
    let (
        _dir,
        Evidence {
            ca_pem,
            bundle,
            other_session,
        },
    ) = evidence();
    // A record of the other session, valid in the log, slipped in at its place.
    let mut mixed = bundle.clone();
    let intruder = other_session[10].clone();
    let at = mixed
        .records
        .iter()
        .position(|r| r.log_index > intruder.log_index)
        .unwrap();
    mixed.records.insert(at, intruder);
    let (index, error) = record_error(check(&mixed, &ca_pem));
    assert_eq!(index, at);
    assert!(
        matches!(
            error,
            RecordError::OtherSession {
                sessionid: Some(8),
                ..
            }
        ),
        "{error}"
    );
    let mut reordered = bundle.clone();
    reordered.records.swap(2, 3);
    assert!(matches!(
        check(&reordered, &ca_pem),
        Err(BundleError::Order { index: 3, .. })
    ));
    let mut twice = bundle.clone();
    twice.records.insert(3, twice.records[2].clone());
    assert!(matches!(
        check(&twice, &ca_pem),
        Err(BundleError::Order { index: 3, .. })
    ));
    // The session key must name the records' session, on this host, spelled one way.
    for session in [
        bundle.session.replacen(":7:", ":8:", 1),
        bundle.session.replacen(":7:", ":07:", 1),
        bundle.session.replacen("host-1:", "host-2:", 1),
    ] {
        let mut other = bundle.clone();
        other.session = session;
        let result = check(&other, &ca_pem);
        assert!(
            matches!(
                result,
                Err(BundleError::Session(_)
                    | BundleError::Record {
                        error: RecordError::OtherSession { .. },
                        ..
                    })
            ),
            "{result:?}"
        );
    }
}

#[test]
fn certificates_must_be_valid_when_cosigned() {
    let dir = tempfile::tempdir().unwrap();
    // Cosigned two days on, when the day-long certificates have expired.
    let Evidence { ca_pem, bundle, .. } = build(dir.path(), now_unix() + 2 * 86_400).unwrap();
    let (index, error) = record_error(check(&bundle, &ca_pem));
    assert_eq!(index, 0);
    assert!(
        matches!(error, RecordError::NotValid { ref key, .. } if key.contains("/recorder/witness/")),
        "{error}"
    );
}

/// One changed byte anywhere but in `exported_unix_nano` fails the bundle. Some 120 bytes
/// spread over the file, each with two kinds of change: verifying is slow in debug builds.
#[test]
fn any_changed_byte_fails() {
    let (_dir, Evidence { ca_pem, bundle, .. }) = evidence();
    let json = bundle.to_json();
    let exported = bundle.exported_unix_nano.to_string();
    let start = String::from_utf8_lossy(&json)
        .find(&format!(r#""exported_unix_nano":{exported}"#))
        .unwrap();
    let unsigned = start..start + r#""exported_unix_nano":"#.len() + exported.len();
    let mut tried = 0;
    // Odd, so the bytes tried fall at every offset within base64 quanta and PEM lines.
    let step = (json.len() / 120) | 1;
    for at in (0..json.len()).step_by(step) {
        if unsigned.contains(&at) {
            continue;
        }
        for bit in [0x01, 0x20] {
            let mut changed = json.clone();
            changed[at] ^= bit;
            assert!(
                verify(&changed, &ca_pem).is_err(),
                "byte {at} ^ {bit:#x} passed: {:?}",
                String::from_utf8_lossy(&json[at.saturating_sub(40)..(at + 40).min(json.len())])
            );
            tried += 1;
        }
    }
    assert!(tried > 200, "{tried}");
}
