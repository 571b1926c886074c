//! Real bundles for tests, built from scratch the way the recorder makes their parts: a CA,
//! an agent and a witness certificate, a host log of two chains signed with the agent's key
//! and cosigned with the witness's, and RFC 6962 inclusion proofs from the log's leaves.

use std::path::Path;

use pki::{Ca, PkiError, Validity};
use prost::Message as _;
use proto::{
    chain::Chain,
    session::Key,
    v1::{ChainStart, Event, Exec, Fork, Process, SessionRoot, Tty, event::Body},
};
use tlog::{Checkpoint, Cosigner, Hash, Note, Signer, TlogProof};

use crate::{Bundle, FORMAT, Record};

/// The host whose log the bundles are of.
pub const HOST: &str = "host-1";

/// The witness, as its collector is named.
pub const WITNESS: &str = "c1";

/// Records in each of the log's two chains.
const PER_CHAIN: usize = 160;

/// The session exported, and another whose records interleave with it.
const SESSION: (u32, u64) = (7, 1_796_100_000_000_000_000);
const OTHER: (u32, u64) = (8, 1_796_100_500_000_000_000);

/// What [`build`] made.
pub struct Evidence {
    /// The CA the bundle is checked under.
    pub ca_pem: String,
    /// The bundle of session 7 of [`HOST`].
    pub bundle: Bundle,
    /// Every record of another session of the host, in log order, with its proof against
    /// the same checkpoints as the bundle's.
    pub other_session: Vec<Record>,
}

/// Builds, under `dir` (a new CA in `dir/ca`), the log of [`HOST`]: two chains (an agent
/// restart between them) in which a session's records interleave with another session's and
/// with records of no session, and a session that spans the restart. The log has two
/// checkpoints, at the end of each chain, signed by the agent and cosigned by the witness
/// [`WITNESS`] at `cosign_unix` and a minute later; each record is proven against the first
/// checkpoint that covers it. The certificates are valid from five minutes ago for a day.
///
/// # Panics
///
/// When the log's own proofs cannot be made: a bug here.
pub fn build(dir: &Path, cosign_unix: u64) -> Result<Evidence, PkiError> {
    let ca = Ca::init(&dir.join("ca"))?;
    let deployment = pki::deployment_id(ca.cert_pem())?;
    let validity = Validity::from_now(std::time::Duration::from_hours(24));
    let agent = ca.issue_agent(HOST, validity)?;
    let witness = ca.issue_witness(WITNESS, validity)?;
    let key_error = |e: tlog::KeyError| PkiError::Key(e.to_string());
    let signer = Signer::from_seed(
        &pki::host_log(&deployment, HOST),
        pki::ed25519_seed_from_pkcs8_pem(&agent.key_pem)?,
    )
    .map_err(key_error)?;
    let cosigner = Cosigner::from_seed(
        &pki::witness_key(&deployment, WITNESS),
        pki::ed25519_seed_from_pkcs8_pem(&witness.key_pem)?,
    )
    .map_err(key_error)?;

    let log = host_log();
    let leaves: Vec<Hash> = log.iter().map(|r| tlog::leaf_hash(&r.hash)).collect();
    let notes = [(PER_CHAIN, cosign_unix), (2 * PER_CHAIN, cosign_unix + 60)]
        .map(|(size, time)| note(&signer, &cosigner, &leaves[..size], time));
    let mut session = Vec::new();
    let mut other_session = Vec::new();
    for (index, logged) in log.into_iter().enumerate() {
        let (size, note) = if index < PER_CHAIN {
            (PER_CHAIN, &notes[0])
        } else {
            (2 * PER_CHAIN, &notes[1])
        };
        let (index, size) = (index as u64, size as u64);
        let proof =
            tlog::inclusion_proof(index, size, &mut &leaves[..]).expect("the leaves are all here");
        let record = Record {
            chain_id: logged.chain_id,
            seq: logged.seq,
            log_index: index,
            prev: logged.prev.to_vec(),
            event: logged.event,
            proof: TlogProof::new(index, proof, note.clone())
                .expect("a short proof")
                .to_text(),
        };
        match logged.session {
            Some(SESSION) => session.push(record),
            Some(OTHER) => other_session.push(record),
            _ => {}
        }
    }
    let certificates = [&agent, &witness]
        .map(|issued| pki::CertInfo::from_pem(&issued.cert_pem).map(|info| info.pem()));
    let [agent_pem, witness_pem] = certificates;
    let bundle = Bundle {
        format: FORMAT.into(),
        session: Key {
            host: HOST.into(),
            sessionid: SESSION.0,
            start_unix_nano: SESSION.1,
        }
        .to_string(),
        host: HOST.into(),
        origin: pki::host_log(&deployment, HOST),
        exported_unix_nano: (cosign_unix + 120) * 1_000_000_000,
        certificates: vec![agent_pem?, witness_pem?],
        policy: crate::policy(&[signer.verifier()], &[cosigner.verifier()]),
        records: session,
    };
    Ok(Evidence {
        ca_pem: ca.cert_pem().to_owned(),
        bundle,
        other_session,
    })
}

/// A record of the host's log.
struct Logged {
    chain_id: String,
    seq: u64,
    prev: Hash,
    event: Vec<u8>,
    hash: Hash,
    session: Option<(u32, u64)>,
}

/// The host's log: its chains' records in spool order.
fn host_log() -> Vec<Logged> {
    let mut log: Vec<Logged> = Vec::new();
    for (n, start) in [1_796_000_000_000_000_000u64, 1_796_200_000_000_000_000]
        .into_iter()
        .enumerate()
    {
        let mut chain = Chain::new(format!("{HOST}:boot-{n}:{start}"));
        // The head of the chain before, as the restarted agent found it in its spool.
        let head = log
            .last()
            .map(|p| (p.chain_id.clone(), p.seq, p.hash.to_vec()));
        for seq in 0..PER_CHAIN as u64 {
            let (event, session) = if seq == 0 {
                let (previous_chain_id, previous_seq, previous_hash) =
                    head.clone().unwrap_or_default();
                let body = Body::ChainStart(ChainStart {
                    host: HOST.into(),
                    boot_id: format!("boot-{n}"),
                    previous_chain_id,
                    previous_seq,
                    previous_hash,
                    host_name: "bundle-host".into(),
                });
                (event(start, None, body), None)
            } else {
                let time = start + seq * 1_000_000;
                let session = match seq % 3 {
                    0 => Some(SESSION),
                    1 => Some(OTHER),
                    _ => None,
                };
                let body = if seq % 2 == 0 {
                    Body::Exec(Exec {
                        filename: format!("/usr/bin/tool-{seq}"),
                        argv: vec![b"tool".to_vec().into(), seq.to_string().into_bytes().into()],
                        ..Exec::default()
                    })
                } else if session.is_some() {
                    Body::Tty(Tty {
                        device: "136:1".into(),
                        data: format!("line {seq}\r\n").into_bytes().into(),
                        ..Tty::default()
                    })
                } else {
                    Body::Fork(Fork {})
                };
                (event(time, session, body), session)
            };
            let prev = chain.head();
            let (seq, hash) = chain.link(&event);
            log.push(Logged {
                chain_id: chain.id().to_owned(),
                seq,
                prev,
                event,
                hash,
                session,
            });
        }
    }
    log
}

/// An event's bytes: by a process of `session` (a daemon's when none), or by none at all for
/// a chain start.
fn event(time: u64, session: Option<(u32, u64)>, body: Body) -> Vec<u8> {
    let chain_start = matches!(body, Body::ChainStart(_));
    Event {
        time_unix_nano: time,
        process: (!chain_start).then(|| Process {
            pid: 4242,
            tgid: 4242,
            sessionid: session.map(|s| s.0),
            comm: "tool".into(),
            ..Process::default()
        }),
        session_root: session.map(|(_, start)| SessionRoot {
            pid: 4000,
            start_unix_nano: start,
        }),
        body: Some(body),
        ..Event::default()
    }
    .encode_to_vec()
}

/// The note of a checkpoint of `leaves`, signed and cosigned at `time`.
fn note(signer: &Signer, cosigner: &Cosigner, leaves: &[Hash], time: u64) -> Note {
    let checkpoint = Checkpoint::new(signer.name(), leaves.len() as u64, tlog::root_of(leaves))
        .expect("a valid checkpoint");
    let mut note = tlog::sign_checkpoint(signer, &checkpoint).expect("a signable checkpoint");
    tlog::add_cosignature(&mut note, cosigner, &checkpoint, time).expect("a valid time");
    note
}
