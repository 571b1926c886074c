//! The Query service, the RPC edge operators read the store through. Filter semantics are
//! collector.proto's (`filter`); Sessions and Replay are assembled in `sessions`; Verify is
//! the store-independent chain verifier (`crate::verify`); Evidence streams what a client
//! needs to run the same checks itself (`evidence`).

mod evidence;
mod export;
mod filter;
mod sessions;
mod tail;

use std::{fmt::Write as _, sync::Arc};

use pki::Role;
use proto::{
    time::rfc3339_nanos,
    v1::{
        ChainHead, Event, EvidenceItem, EvidenceRequest, ExportChunk, ExportRequest, Filter,
        HostsRequest, HostsResponse, ReplayRequest, SearchRequest, SearchResponse, SessionsRequest,
        SessionsResponse, StoredEvent, TailRequest, VerifyRequest, VerifyResponse, event::Body,
        evidence_item::Item, query_server::Query,
    },
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    auth::{Caller, Gate},
    error::QueryError,
    liveness::Liveness,
    store::{Bound, COLLECTOR_HOST, Cursor, EventFilter, Store, StoreError, blocking},
    verify::verify_all,
    witness::Witness,
};

/// Events of a Search page unless fewer are asked for, and at most.
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;
/// Sessions of a Sessions page unless fewer are asked for, and at most.
const DEFAULT_SESSIONS: u32 = 100;
const MAX_SESSIONS: u32 = 1000;
/// Bytes of a Search or Sessions response at most, and of one read of a streaming call:
/// under the 4 MiB gRPC clients accept by default, and over the largest event (1 MiB, with
/// its framing), which a page always has room for.
const PAGE_BYTES: usize = 3 << 20;
/// Rows read from the store at a time by streaming calls.
const PAGE: usize = 1000;
/// One read of a streaming call.
const STREAM_READ: Bound = Bound {
    rows: PAGE,
    bytes: PAGE_BYTES,
};
/// Bytes of a bundle file per Export message.
const EXPORT_CHUNK: usize = 1 << 20;

/// The statuses of collector.proto's Query contract.
impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        let message = e.to_string();
        match e {
            QueryError::Invalid(_) => Self::invalid_argument(message),
            QueryError::NotFound(_) => Self::not_found(message),
            QueryError::Store(StoreError::Full(_)) => Self::resource_exhausted(message),
            QueryError::Store(_) => Self::internal(message),
        }
    }
}

/// A store call on the blocking pool, its failure as the status clients see.
async fn read<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    Ok(blocking(call).await.map_err(QueryError::from)?)
}

pub(crate) struct QueryService {
    store: Arc<dyn Store>,
    /// The row up to which every row is settled, for tails (`tail::follow_store`).
    settled_rows: watch::Sender<i64>,
    gate: Gate,
    /// Verify checks hosts' logs with it; `None` without TLS.
    witness: Option<Arc<Witness>>,
    liveness: Arc<Liveness>,
}

impl QueryService {
    /// `live` is the writer's: it is marked after each commit.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        live: &watch::Sender<()>,
        gate: Gate,
        witness: Option<Arc<Witness>>,
        liveness: Arc<Liveness>,
    ) -> Self {
        Self {
            settled_rows: tail::follow_store(Arc::clone(&store), live.subscribe()),
            store,
            gate,
            witness,
            liveness,
        }
    }

    /// Lets an auditor (or above) in, and chains the read before anything is read.
    async fn reader<T>(
        &self,
        request: &Request<T>,
        method: &str,
        detail: String,
    ) -> Result<Caller, Status> {
        let caller = self
            .gate
            .operator(request, Role::Auditor, &format!("{method} of the evidence"))
            .await?;
        self.gate.read(&caller, method, detail).await?;
        Ok(caller)
    }
}

/// The display name a chain's `ChainStart` gives its host; `None` when its first record is
/// pruned or is not a `ChainStart` (verify names that chain).
fn chain_name(store: &dyn Store, chain_id: &str) -> Result<Option<String>, StoreError> {
    let mut name = None;
    store.chain_rows(chain_id, 0, 1, &mut |row| {
        if row.seq == 0
            && let Ok(event) = <Event as prost::Message>::decode(row.event)
            && let Some(Body::ChainStart(start)) = event.body
        {
            name = Some(start.host_name);
        }
        std::ops::ControlFlow::Break(())
    })?;
    Ok(name)
}

/// The rows a page asked for `asked` holds at most: `default` for 0, never more than `max`.
fn page_rows(asked: u32, default: u32, max: u32) -> usize {
    let rows = match asked {
        0 => default,
        n => n.min(max),
    };
    rows as usize
}

/// What a Search request asks the store for: the events it selects, where it resumes, and
/// how many it takes.
fn search_query(request: SearchRequest) -> Result<(EventFilter, Cursor, Bound), QueryError> {
    let mut filter = filter::event_filter(request.filter)?;
    filter.since_unix_nano = request.since_unix_nano;
    filter.until_unix_nano = request.until_unix_nano;
    let bound = Bound {
        rows: page_rows(request.limit, DEFAULT_LIMIT, MAX_LIMIT),
        bytes: PAGE_BYTES,
    };
    let after = filter::parse_token(&request.page_token)?;
    Ok((filter, after, bound))
}

/// Longest description of a request an access record keeps.
const DETAIL_MAX: usize = 512;

/// What a filter asks for, in a few words, for the access record.
fn describe(filter: Option<&Filter>, rest: &str) -> String {
    let mut text = String::new();
    if let Some(f) = filter {
        for (name, value) in [
            ("host", &f.host),
            ("identity", &f.identity),
            ("session", &f.session),
        ] {
            if !value.is_empty() {
                let _ = write!(text, "{name}={value} ");
            }
        }
        if !f.kinds.is_empty() {
            let _ = write!(text, "kinds={} ", f.kinds.join(","));
        }
    }
    text.push_str(rest);
    text.truncate(text.trim_end().len());
    text.truncate(text.floor_char_boundary(DETAIL_MAX));
    text
}

/// A request's parameters as its access record spells them, `name=value`, leaving out those
/// left at their default (empty).
pub(crate) fn params(pairs: &[(&str, String)]) -> String {
    let mut text = String::new();
    for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        let _ = write!(text, "{name}={value} ");
    }
    text.truncate(text.trim_end().len());
    text
}

/// A time parameter for `params`: RFC 3339 to the nanosecond, exact and readable; empty for
/// 0, the default (from the beginning, or with no end).
pub(crate) fn at(unix_nano: u64) -> String {
    if unix_nano == 0 {
        String::new()
    } else {
        rfc3339_nanos(unix_nano)
    }
}

/// A count or flag for `params`: empty at its default.
fn given<T: ToString + Default + PartialEq + Copy>(value: T) -> String {
    if value == Default::default() {
        String::new()
    } else {
        value.to_string()
    }
}

/// Streams every event each of `filters` selects, in turn, oldest first, read from the store
/// a page at a time.
fn stream_search<const N: usize>(
    store: Arc<dyn Store>,
    filters: [EventFilter; N],
) -> ReceiverStream<Result<StoredEvent, Status>> {
    let (tx, rx) = mpsc::channel(PAGE);
    tokio::spawn(async move {
        for filter in filters {
            let mut after = Cursor::default();
            loop {
                let (store, f) = (Arc::clone(&store), filter.clone());
                let page = match read(move || store.search(&f, after, STREAM_READ)).await {
                    Ok(page) => page,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                for (cursor, event) in page.rows {
                    after = cursor;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if !page.more {
                    break;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

type EvidenceSender = mpsc::Sender<Result<EvidenceItem, Status>>;

/// Why an evidence stream ends before its end.
enum Ended {
    /// The client went away: nothing more to send.
    Gone,
    Failed(Status),
}

impl From<Status> for Ended {
    fn from(status: Status) -> Self {
        Self::Failed(status)
    }
}

/// The evidence of `host` (empty: every host, then the collectors' own chains; "collector":
/// those alone), as the stream the client reads.
fn stream_evidence(
    store: Arc<dyn Store>,
    witness: Arc<Witness>,
    host: String,
) -> ReceiverStream<Result<EvidenceItem, Status>> {
    let (tx, rx) = mpsc::channel(evidence::PAGE);
    tokio::spawn(async move {
        if let Err(Ended::Failed(status)) = send_evidence(&store, &witness, host, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    ReceiverStream::new(rx)
}

async fn send(tx: &EvidenceSender, items: Vec<Item>) -> Result<(), Ended> {
    for item in items {
        let item = EvidenceItem { item: Some(item) };
        tx.send(Ok(item)).await.map_err(|_| Ended::Gone)?;
    }
    Ok(())
}

/// In the order of collector.proto's `EvidenceItem`.
async fn send_evidence(
    store: &Arc<dyn Store>,
    witness: &Arc<Witness>,
    host: String,
    tx: &EvidenceSender,
) -> Result<(), Ended> {
    let own = {
        let store = Arc::clone(store);
        read(move || crate::verify::OwnRecords::read(store.as_ref())).await?
    };
    let mut items = vec![Item::CollectorCertificatePem(witness.cert_pem.clone())];
    items.extend(
        own.witnesses
            .into_iter()
            .filter(|(_, pem)| *pem != witness.cert_pem)
            .map(|(_, pem)| Item::WitnessCertificatePem(pem)),
    );
    send(tx, items).await?;
    let hosts = match host.as_str() {
        "" => {
            let store = Arc::clone(store);
            read(move || evidence::hosts(store.as_ref())).await?
        }
        COLLECTOR_HOST => Vec::new(),
        _ => vec![host.clone()],
    };
    if !hosts.is_empty() {
        for host in hosts {
            let (s, w, h) = (Arc::clone(store), Arc::clone(witness), host.clone());
            let notes = own
                .prune_notes
                .iter()
                .map(|(_, note)| note.clone())
                .collect();
            let holes = own
                .holes
                .iter()
                .filter(|(of, _)| *of == host)
                .map(|(_, event)| event.clone())
                .collect();
            let (header, end) =
                read(move || evidence::log_header(s.as_ref(), &w, &h, notes, holes)).await?;
            send(tx, header).await?;
            send_records(store, tx, evidence::Records::Log { host, end }).await?;
        }
    }
    if host.is_empty() || host == COLLECTOR_HOST {
        let (s, w) = (Arc::clone(store), Arc::clone(witness));
        let (header, chains) = read(move || evidence::own_header(s.as_ref(), &w)).await?;
        send(tx, header).await?;
        for records in chains {
            send_records(store, tx, records).await?;
        }
    }
    Ok(())
}

/// Every record of `which`, read a page at a time.
async fn send_records(
    store: &Arc<dyn Store>,
    tx: &EvidenceSender,
    which: evidence::Records,
) -> Result<(), Ended> {
    let mut from = 0;
    loop {
        let (s, w) = (Arc::clone(store), which.clone());
        let (page, next) = read(move || evidence::records(s.as_ref(), &w, from)).await?;
        let done = page.len() < evidence::PAGE;
        send(tx, page.into_iter().map(Item::Record).collect()).await?;
        if done {
            return Ok(());
        }
        from = next;
    }
}

/// Streams `filter`'s events stored since `since_unix_nano` (0: from now), then live ones,
/// until the client goes. Rows whose ids were taken before it began are the history, which
/// `since_unix_nano` selects from; every later row is live, whatever its time.
/// `settled_rows` says up to which row every row is settled; it is subscribed before the
/// store's reach is read here, so every move after that point wakes the tail, and the
/// switch from history to live misses nothing.
async fn follow(
    store: Arc<dyn Store>,
    mut settled_rows: watch::Receiver<i64>,
    filter: EventFilter,
    since_unix_nano: u64,
) -> Result<ReceiverStream<Result<StoredEvent, Status>>, Status> {
    let reach = {
        let store = Arc::clone(&store);
        read(move || store.reach()).await?
    };
    let history_end = reach.row;
    // Each of the two is a bound below which every row is settled; so is the higher.
    let mut up_to = tail::Settled::default()
        .take(reach)
        .max(*settled_rows.borrow_and_update());
    let history = EventFilter {
        since_unix_nano,
        ..filter.clone()
    };
    let live = EventFilter {
        since_unix_nano: 0,
        ..filter
    };
    let (tx, rx) = mpsc::channel(PAGE);
    tokio::spawn(async move {
        let mut cursor = if since_unix_nano == 0 { history_end } else { 0 };
        loop {
            while cursor < up_to {
                let (end, f) = if cursor < history_end {
                    (up_to.min(history_end), history.clone())
                } else {
                    (up_to, live.clone())
                };
                let s = Arc::clone(&store);
                let page = match read(move || s.after_row(&f, cursor, end, STREAM_READ)).await {
                    Ok(page) => page,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                for (row, event) in page.rows {
                    cursor = row;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if !page.more {
                    cursor = end;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                changed = settled_rows.changed() => if changed.is_err() {
                    return;
                },
            }
            up_to = up_to.max(*settled_rows.borrow_and_update());
        }
    });
    Ok(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Query for QueryService {
    type TailStream = ReceiverStream<Result<StoredEvent, Status>>;
    type ReplayStream = ReceiverStream<Result<StoredEvent, Status>>;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let r = request.get_ref();
        let detail = describe(
            r.filter.as_ref(),
            &params(&[("since", at(r.since_unix_nano))]),
        );
        self.reader(&request, "Tail", detail).await?;
        let request = request.into_inner();
        let filter = filter::event_filter(request.filter)?;
        let stream = follow(
            Arc::clone(&self.store),
            self.settled_rows.subscribe(),
            filter,
            request.since_unix_nano,
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let r = request.get_ref();
        let detail = describe(
            r.filter.as_ref(),
            &params(&[
                ("since", at(r.since_unix_nano)),
                ("until", at(r.until_unix_nano)),
                ("limit", given(r.limit)),
                ("page_token", r.page_token.clone()),
            ]),
        );
        self.reader(&request, "Search", detail).await?;
        let (filter, after, bound) = search_query(request.into_inner())?;
        let store = Arc::clone(&self.store);
        let page = read(move || store.search(&filter, after, bound)).await?;
        let next_page_token = match page.rows.last() {
            Some((cursor, _)) if page.more => filter::page_token(*cursor),
            _ => String::new(),
        };
        Ok(Response::new(SearchResponse {
            events: page.rows.into_iter().map(|(_, e)| e).collect(),
            next_page_token,
        }))
    }

    async fn sessions(
        &self,
        request: Request<SessionsRequest>,
    ) -> Result<Response<SessionsResponse>, Status> {
        let r = request.get_ref();
        let detail = params(&[
            ("host", r.host.clone()),
            ("since", at(r.since_unix_nano)),
            ("limit", given(r.limit)),
            ("page_token", r.page_token.clone()),
        ]);
        self.reader(&request, "Sessions", detail).await?;
        let SessionsRequest {
            host,
            since_unix_nano,
            limit,
            page_token,
        } = request.into_inner();
        let bound = Bound {
            rows: page_rows(limit, DEFAULT_SESSIONS, MAX_SESSIONS),
            bytes: PAGE_BYTES,
        };
        let after = filter::parse_token(&page_token)?;
        let store = Arc::clone(&self.store);
        let page =
            read(move || sessions::sessions(store.as_ref(), host, since_unix_nano, after, bound))
                .await?;
        Ok(Response::new(SessionsResponse {
            sessions: page.sessions,
            next_page_token: page.next.map(filter::page_token).unwrap_or_default(),
        }))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        let r = request.get_ref();
        let detail = params(&[
            ("session", r.session.clone()),
            ("tty", r.tty.clone()),
            ("all_ttys", given(r.all_ttys)),
            ("input", given(r.input)),
        ]);
        self.reader(&request, "Replay", detail).await?;
        let request = request.into_inner();
        let store = Arc::clone(&self.store);
        let filters =
            tokio::task::spawn_blocking(move || sessions::replay_filters(store.as_ref(), request))
                .await
                .map_err(|e| Status::internal(format!("replay failed: {e}")))??;
        Ok(Response::new(stream_search(
            Arc::clone(&self.store),
            filters,
        )))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let r = request.get_ref();
        let detail = params(&[("host", r.host.clone()), ("chain", r.chain_id.clone())]);
        self.reader(&request, "Verify", detail).await?;
        let VerifyRequest { host, chain_id } = request.into_inner();
        let (store, witness) = (Arc::clone(&self.store), self.witness.clone());
        let report =
            read(move || verify_all(store.as_ref(), witness.as_deref(), &host, &chain_id)).await?;
        for c in report.chains.iter().filter(|c| !c.ok) {
            tracing::error!(host = %c.host, chain = %c.chain_id, first_bad_seq = ?c.first_bad_seq, reason = %c.reason, "stored chain fails verification");
        }
        for l in report.logs.iter().filter(|l| !l.ok) {
            tracing::error!(host = %l.host, reason = %l.reason, "stored log fails verification");
        }
        for f in &report.findings {
            tracing::error!(subject = %f.subject, reason = %f.reason, "verification finding");
        }
        let ok = report.ok();
        Ok(Response::new(VerifyResponse {
            chains: report.chains,
            logs: report.logs,
            findings: report.findings,
            ok,
        }))
    }

    async fn hosts(
        &self,
        request: Request<HostsRequest>,
    ) -> Result<Response<HostsResponse>, Status> {
        self.reader(&request, "Hosts", String::new()).await?;
        let store = Arc::clone(&self.store);
        let chains = read(move || store.chains()).await?;
        let mut hosts = self.liveness.statuses(|host| {
            // The store lists chains in the order they began: a host's last is its newest.
            chains
                .iter()
                .rev()
                .find(|c| c.host == host)
                .map(|c| ChainHead {
                    chain_id: c.chain_id.clone(),
                    next_seq: c.next_seq,
                    head_hash: c.head_hash.to_vec(),
                })
        });
        let store = Arc::clone(&self.store);
        let newest: Vec<Option<String>> = hosts
            .iter()
            .map(|h| h.head.as_ref().map(|c| c.chain_id.clone()))
            .collect();
        let said = read(move || {
            newest
                .iter()
                .map(|chain| {
                    chain
                        .as_deref()
                        .map_or(Ok(None), |c| chain_name(&*store, c))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        for (host, name) in hosts.iter_mut().zip(said) {
            // The chained name outranks the Hello's: it is signed evidence, the Hello is not.
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                host.name = name;
            }
        }
        Ok(Response::new(HostsResponse { hosts }))
    }

    type EvidenceStream = ReceiverStream<Result<EvidenceItem, Status>>;
    type ExportStream = ReceiverStream<Result<ExportChunk, Status>>;

    async fn evidence(
        &self,
        request: Request<EvidenceRequest>,
    ) -> Result<Response<Self::EvidenceStream>, Status> {
        let detail = params(&[("host", request.get_ref().host.clone())]);
        self.reader(&request, "Evidence", detail).await?;
        let Some(witness) = self.witness.clone() else {
            return Err(Status::failed_precondition(
                "this collector serves without TLS: it keeps no signed logs to check",
            ));
        };
        let host = request.into_inner().host;
        Ok(Response::new(stream_evidence(
            Arc::clone(&self.store),
            witness,
            host,
        )))
    }

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let detail = params(&[("session", request.get_ref().session.clone())]);
        self.reader(&request, "Export", detail).await?;
        let Some(witness) = self.witness.clone() else {
            return Err(Status::failed_precondition(
                "this collector serves without TLS: it keeps no signed logs to export",
            ));
        };
        let key = request.into_inner().session;
        let store = Arc::clone(&self.store);
        let now = proto::time::now_unix_nano();
        let file = tokio::task::spawn_blocking(move || {
            export::bundle(store.as_ref(), &witness, &key, now)
        })
        .await
        .map_err(|e| Status::internal(format!("export failed: {e}")))??;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in file.chunks(EXPORT_CHUNK) {
                let chunk = ExportChunk {
                    data: chunk.to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Hostile request parameters, past the filter's own (`filter::tests`): any limit, page
/// token, time and filter reach the store without its failing, and pages resume exactly.
#[cfg(test)]
mod tests {
    use proptest::{prelude::*, test_runner::TestRunner};
    use proto::v1::{Event, Exec, Identity, Process, SessionRoot, Tty, event::Body};

    use super::*;
    use crate::testing::{self, TestStore};

    /// Events of two hosts, in two sessions and none, of several kinds, some at the same
    /// time, so pages end between ties.
    fn corpus() -> TestStore {
        let event = |time, sessionid, body| Event {
            time_unix_nano: time,
            process: Some(Process {
                sessionid,
                tty: "136:0".into(),
                ..Process::default()
            }),
            identity: Some(Identity {
                name: if sessionid == Some(7) { "alice" } else { "bob" }.into(),
                ..Identity::default()
            }),
            session_root: sessionid.map(|id| SessionRoot {
                pid: 1,
                start_unix_nano: u64::from(id) * 100,
            }),
            body: Some(body),
        };
        let exec = || Body::Exec(Exec::default());
        let tty = |direction: i32| {
            Body::Tty(Tty {
                direction,
                device: "136:0".into(),
                data: bytes::Bytes::from_static(b"x"),
                ..Tty::default()
            })
        };
        let store = testing::store();
        for (chain, host) in [("h:b:1", "h"), ("g:b:1", "g")] {
            let events: Vec<Event> = [10, 10, 20, 30, 30, 30, 40, 50]
                .into_iter()
                .enumerate()
                .map(|(i, time)| {
                    let sessionid = [Some(7), Some(8), None][i % 3];
                    let body = [exec(), tty(0), tty(1), exec()][i % 4].clone();
                    event(time, sessionid, body)
                })
                .collect();
            store.ingest(chain, host, &events);
        }
        store
    }

    /// One of `known`, or anything `pattern` makes.
    fn text(known: &[&str], pattern: &str) -> BoxedStrategy<String> {
        let known: Vec<String> = known.iter().map(|s| (*s).to_owned()).collect();
        let any = proptest::string::string_regex(pattern).unwrap();
        prop_oneof![prop::sample::select(known), any].boxed()
    }

    /// A time: none, near the corpus's, or anything.
    fn time() -> impl Strategy<Value = u64> {
        prop_oneof![2 => Just(0), 2 => 0..60u64, 1 => any::<u64>()]
    }

    /// A limit: small, or anything.
    fn limit() -> impl Strategy<Value = u32> {
        prop_oneof![0..5u32, any::<u32>()]
    }

    fn token() -> BoxedStrategy<String> {
        prop_oneof![
            2 => Just(String::new()),
            2 => (0..60u64, -2..40i64).prop_map(|(t, r)| format!("{t}.{r}")),
            1 => "\\PC{0,12}",
        ]
        .boxed()
    }

    fn search() -> impl Strategy<Value = SearchRequest> {
        let filter = (
            text(&["", "h", "g"], "\\PC{0,4}"),
            text(&["", "alice", "bob"], "\\PC{0,4}"),
            text(&["", "h:7:700", "8", "g:8:800"], "\\PC{0,10}"),
            prop::collection::vec(text(&["exec", "tty", "tty_in", "fork"], "\\PC{0,6}"), 0..3),
        )
            .prop_map(|(host, identity, session, kinds)| Filter {
                host,
                identity,
                session,
                kinds,
            });
        (prop::option::of(filter), time(), time(), limit(), token()).prop_map(
            |(filter, since_unix_nano, until_unix_nano, limit, page_token)| SearchRequest {
                filter,
                since_unix_nano,
                until_unix_nano,
                limit,
                page_token,
            },
        )
    }

    fn store_error(e: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(format!("the store failed: {e}"))
    }

    /// Following a Search's page tokens from wherever it starts takes each event it
    /// selects once, in order, as one read without a bound does, and no page is longer
    /// than its limit.
    fn check_search(store: &dyn Store, request: SearchRequest) -> Result<(), TestCaseError> {
        let Ok((filter, mut after, bound)) = search_query(request) else {
            return Ok(());
        };
        let unbounded = Bound {
            rows: usize::MAX,
            bytes: usize::MAX,
        };
        let all = store
            .search(&filter, after, unbounded)
            .map_err(store_error)?;
        let mut paged = Vec::new();
        loop {
            let page = store.search(&filter, after, bound).map_err(store_error)?;
            prop_assert!(page.rows.len() <= bound.rows);
            paged.extend(page.rows.iter().cloned());
            prop_assert!(paged.len() <= all.rows.len(), "pages repeat events");
            match page.rows.last() {
                Some((cursor, _)) if page.more => {
                    after = filter::parse_token(&filter::page_token(*cursor))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                _ => break,
            }
        }
        prop_assert_eq!(paged, all.rows);
        Ok(())
    }

    /// Sessions pages likewise, and Replay of any session and terminal is an answer or
    /// a refusal, never the store's failure.
    fn check_sessions(
        store: &dyn Store,
        (host, since, limit, token): (String, u64, u32, String),
        replay: ReplayRequest,
    ) -> Result<(), TestCaseError> {
        match sessions::replay_filters(store, replay) {
            Ok(_) | Err(QueryError::Invalid(_) | QueryError::NotFound(_)) => {}
            Err(e) => return Err(store_error(e)),
        }
        let Ok(mut after) = filter::parse_token(&token) else {
            return Ok(());
        };
        let bound = Bound {
            rows: page_rows(limit, DEFAULT_SESSIONS, MAX_SESSIONS),
            bytes: PAGE_BYTES,
        };
        let unbounded = Bound {
            rows: usize::MAX,
            bytes: usize::MAX,
        };
        let all = sessions::sessions(store, host.clone(), since, after, unbounded)
            .map_err(store_error)?;
        let mut paged = Vec::new();
        loop {
            let page = sessions::sessions(store, host.clone(), since, after, bound)
                .map_err(store_error)?;
            prop_assert!(page.sessions.len() <= bound.rows);
            paged.extend(page.sessions);
            prop_assert!(paged.len() <= all.sessions.len(), "pages repeat sessions");
            match page.next {
                Some(cursor) => after = cursor,
                None => break,
            }
        }
        prop_assert_eq!(paged, all.sessions);
        Ok(())
    }

    fn runner(cases: u32) -> TestRunner {
        TestRunner::new(ProptestConfig {
            cases,
            source_file: Some(file!()),
            ..ProptestConfig::default()
        })
    }

    // The store is made once for a thousand cases: under 1 s each in a debug build.
    #[test]
    fn any_search_pages_through_each_event_it_selects_once() {
        let corpus = corpus();
        runner(1000)
            .run(&search(), |request| check_search(&corpus.store, request))
            .unwrap();
    }

    #[test]
    fn any_sessions_request_pages_through_each_session_once() {
        let corpus = corpus();
        let request = (text(&["", "h", "g"], "\\PC{0,4}"), time(), limit(), token());
        let replay = (
            text(&["h:7:700", "g:8:800", "h:7"], "\\PC{0,12}"),
            text(&["", "136:0", "136:1"], "\\PC{0,6}"),
            any::<(bool, bool)>(),
        )
            .prop_map(|(session, tty, (all_ttys, input))| ReplayRequest {
                session,
                tty,
                all_ttys,
                input,
            });
        runner(1000)
            .run(&(request, replay), |(request, replay)| {
                check_sessions(&corpus.store, request, replay)
            })
            .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_limit_is_a_page_within_the_maximum(asked: u32) {
            let rows = page_rows(asked, DEFAULT_LIMIT, MAX_LIMIT);
            prop_assert!((1..=MAX_LIMIT as usize).contains(&rows));
            prop_assert!(asked == 0 || rows == asked.min(MAX_LIMIT) as usize);
        }
    }

    #[test]
    fn parameters_at_their_default_are_left_out_and_times_are_spelled() {
        let text = params(&[
            ("session", "h:1:2".into()),
            ("since", at(1_796_680_237_510_792_260)),
            ("until", at(0)),
            ("limit", given(0_u32)),
            ("input", given(true)),
        ]);
        assert_eq!(
            text,
            "session=h:1:2 since=2026-12-07T21:50:37.510792260Z input=true"
        );
        assert_eq!(describe(None, &params(&[("host", String::new())])), "");
    }

    proptest! {
        // Long strings cost: about 1 s in a debug build.
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn access_details_stay_within_their_bound(
            host in "\\PC{0,200}",
            session in "\\PC{0,200}",
            kinds in prop::collection::vec("\\PC{0,100}", 0..4),
            rest in "\\PC{0,200}",
        ) {
            let filter = Filter { host, session, kinds, ..Filter::default() };
            let detail = describe(Some(&filter), &rest);
            prop_assert!(detail.len() <= DETAIL_MAX);
            // What the labels and separators add, at most.
            let given = [&filter.host, &filter.session, &filter.kinds.concat(), &rest]
                .map(String::len)
                .iter()
                .sum::<usize>();
            // Trailing blanks are trimmed; `params` never ends with one.
            if given + 32 <= DETAIL_MAX {
                prop_assert!(detail.ends_with(rest.trim_end()));
            }
        }
    }
}
