//! Evidence (collector.proto, `Query.Evidence`): everything stored that a client needs to
//! run verify's checks itself, trusting only the CA (`recorder verify --local`): per host
//! log, its checkpoints and the certificates that signed them, its prune records, its chains
//! as the `chains` table says they stand, and its records with their stored columns in log
//! order; then the collectors' own chains, the checkpoint of the serving collector's kept
//! outside the database, and the `grants` table. Nothing here is checked: the client is
//! not to trust this collector's word, so it is given what is stored, as stored. Records
//! are read a page at a time, so a stream holds one page whatever the store's size.

use std::ops::ControlFlow;

use proto::v1::{LogStart, RawRecord, StoredChain, StoredCheckpoint, evidence_item::Item};

use crate::{
    store::{COLLECTOR_HOST, Columns, Store, StoreError},
    witness::Witness,
};

/// Records read at a time, each page one item per record.
pub(super) const PAGE: usize = 1000;

/// Every host the store holds anything of: a log, a checkpoint or a chain.
pub(super) fn hosts(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let mut hosts: Vec<String> = store.logs()?.into_iter().map(|l| l.host).collect();
    hosts.extend(store.checkpointed_hosts()?);
    hosts.extend(
        store
            .chains()?
            .into_iter()
            .filter(|c| c.host != COLLECTOR_HOST)
            .map(|c| c.host),
    );
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

/// `host`'s log, its prune records (among `notes`, every one of the collectors' chains),
/// its `holes` (the `spool_hole` records of the collectors' chains about it), the
/// certificates that signed its checkpoints, its checkpoints and its chains.
pub(super) fn log_header(
    store: &dyn Store,
    witness: &Witness,
    host: &str,
    notes: Vec<String>,
    holes: Vec<Vec<u8>>,
) -> Result<(Vec<Item>, u64), StoreError> {
    let origin = witness.origin(host);
    let first_index = store.prune(host)?.map_or(0, |p| p.end);
    // The client checks each note's signature and log itself; this only saves it the
    // notes of other hosts.
    let of_log = |note: &String| {
        tlog::Note::parse(note.as_bytes())
            .ok()
            .and_then(|n| verifier::prune::PruneNote::parse_body(n.text()).ok())
            .is_some_and(|n| n.log == origin)
    };
    let prunes: Vec<Item> = notes
        .into_iter()
        .filter(of_log)
        .map(Item::PruneNote)
        .collect();
    // Agents go on shipping while this is read. A commit writes a log's leaves, row and
    // checkpoints at once, so reading the checkpoints and chains before the row, and
    // records only up to the row's size, gives a client no checkpoint or head beyond the
    // records it is sent, and no record beyond the row.
    let checkpoints = store.log_checkpoints(host)?;
    let mut certs: Vec<&str> = Vec::new();
    let mut stored = Vec::with_capacity(checkpoints.len());
    for c in &checkpoints {
        let index = certs
            .iter()
            .position(|p| *p == c.cert_pem)
            .unwrap_or_else(|| {
                certs.push(&c.cert_pem);
                certs.len() - 1
            });
        stored.push(Item::Checkpoint(StoredCheckpoint {
            note: c.note.clone(),
            certificate: u32::try_from(index).unwrap_or(u32::MAX),
            size: c.size,
            root: c.root.to_vec(),
        }));
    }
    let mut chains = Vec::new();
    for chain in store.host_chains(host)? {
        chains.push(stored_chain(store, chain)?);
    }
    let row = store.log(host)?;
    let end = row.as_ref().map_or(u64::MAX, |r| r.size);
    let mut items = vec![Item::Log(LogStart {
        origin: origin.clone(),
        host: host.to_owned(),
        leaves: row
            .as_ref()
            .map_or(0, |r| r.size.saturating_sub(first_index)),
        first_index,
        frontier: row.map(|r| r.frontier),
        chain_id: String::new(),
    })];
    items.extend(prunes);
    items.extend(holes.into_iter().map(Item::Hole));
    items.extend(certs.iter().map(|p| Item::CertificatePem((*p).to_owned())));
    items.extend(stored);
    items.extend(chains);
    Ok((items, end))
}

fn stored_chain(store: &dyn Store, chain: crate::store::ChainState) -> Result<Item, StoreError> {
    Ok(Item::Chain(StoredChain {
        checkpoint_size: store.last_checkpoint(&chain.chain_id)?,
        chain_id: chain.chain_id,
        host: chain.host,
        next_seq: chain.next_seq,
        head_hash: chain.head_hash.to_vec(),
    }))
}

/// A record as stored.
fn raw(
    chain_id: &str,
    seq: u64,
    log_index: u64,
    event: &[u8],
    hash: &[u8],
    c: Columns<'_>,
) -> RawRecord {
    RawRecord {
        chain_id: chain_id.to_owned(),
        seq,
        log_index,
        event: event.to_vec(),
        hash: hash.to_vec(),
        host: c.host.to_owned(),
        kind: c.kind.to_owned(),
        session: c.session.to_owned(),
        tty: c.tty.to_owned(),
        identity_kind: c.identity_kind,
        identity_name: c.identity_name.to_owned(),
        grant: c.grant.to_owned(),
        time_unix_nano: c.time_unix_nano,
        tty_bytes: c.tty_bytes,
        sessionid: c.sessionid,
    }
}

/// The collector's own log, the checkpoint of it kept outside the database, every
/// collector's chain and the `grants` table, and whose records go with them, up to where.
pub(super) fn own_header(
    store: &dyn Store,
    witness: &Witness,
) -> Result<(Vec<Item>, Vec<Records>), StoreError> {
    // The records of the chains up to where they stood when the grants were read.
    let (chains, grants) = crate::verify::grants_snapshot(store)?;
    let own = witness.own_chain();
    let mut items = vec![Item::Log(LogStart {
        origin: witness.own_origin(),
        host: COLLECTOR_HOST.into(),
        leaves: chains
            .iter()
            .find(|c| c.chain_id == own)
            .map_or(0, |c| c.next_seq),
        first_index: 0,
        frontier: None,
        chain_id: own,
    })];
    // An unreadable one is the collector's own problem, which its verify reports; the
    // client checks what it is given.
    if let Ok(Some(text)) = witness.kept_checkpoint() {
        items.push(Item::Checkpoint(StoredCheckpoint {
            note: String::from_utf8_lossy(&text).into_owned(),
            ..StoredCheckpoint::default()
        }));
    }
    let mut records = Vec::with_capacity(chains.len());
    for chain in chains {
        records.push(Records::Own {
            chain_id: chain.chain_id.clone(),
            end: chain.next_seq,
        });
        items.push(stored_chain(store, chain)?);
    }
    items.extend(grants.into_iter().map(Item::Grant));
    Ok((items, records))
}

/// Whose records to read, and where they end.
#[derive(Clone)]
pub(super) enum Records {
    /// A host's log's, in log order, below log index `end`.
    Log { host: String, end: u64 },
    /// A collector's chain's, in seq order, below seq `end`: a record's leaf index in that
    /// collector's own log is its seq.
    Own { chain_id: String, end: u64 },
}

/// A page of the records of `which` from `from` on (a log index, or a seq of a collector's
/// chain), and where the page after it starts.
pub(super) fn records(
    store: &dyn Store,
    which: &Records,
    from: u64,
) -> Result<(Vec<RawRecord>, u64), StoreError> {
    let mut page = Vec::with_capacity(PAGE);
    match which {
        Records::Log { host, end } => store.log_leaves(host, from, PAGE, &mut |leaf| {
            if leaf.log_index >= *end {
                return ControlFlow::Break(());
            }
            page.push(raw(
                leaf.chain_id,
                leaf.seq,
                leaf.log_index,
                leaf.event,
                leaf.hash,
                leaf.columns,
            ));
            ControlFlow::Continue(())
        })?,
        Records::Own { chain_id, end } => store.chain_rows(chain_id, from, PAGE, &mut |row| {
            if row.seq >= *end {
                return ControlFlow::Break(());
            }
            page.push(raw(
                chain_id,
                row.seq,
                row.seq,
                row.event,
                row.hash,
                row.columns,
            ));
            ControlFlow::Continue(())
        })?,
    }
    let next = page.last().map_or(from, |r| r.log_index + 1);
    Ok((page, next))
}
