//! The Query service: reads the store for operators. Filter semantics are collector.proto's.

use std::sync::Arc;

use proto::v1::{
    Filter, ReplayRequest, SearchRequest, SearchResponse, SessionsRequest, SessionsResponse,
    StoredEvent, TailRequest, VerifyRequest, VerifyResponse, query_server::Query,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::{Cursor, EventFilter, SessionMatch, Store, blocking};

/// The kinds a filter may name.
const KINDS: [&str; 10] = [
    "exec",
    "fork",
    "exit",
    "tty",
    "gap",
    "chain_start",
    "alert",
    "violation",
    "kill",
    "grant_change",
];
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;
/// Rows read from the store at a time by streaming calls.
const PAGE: usize = 1000;

pub struct QueryService {
    store: Arc<dyn Store>,
    live: broadcast::Sender<i64>,
}

impl QueryService {
    /// `live` is the writer's: it carries the highest stored row id after each commit.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, live: broadcast::Sender<i64>) -> Self {
        Self { store, live }
    }
}

fn event_filter(filter: Option<Filter>) -> Result<EventFilter, Status> {
    let f = filter.unwrap_or_default();
    let some = |s: String| (!s.is_empty()).then_some(s);
    let session = match some(f.session) {
        None => None,
        Some(key) if key.contains(':') => Some(SessionMatch::Key(key)),
        Some(id) => Some(SessionMatch::Id(id.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "session {id:?} is neither a session key (HOST:SESSIONID:ROOT_START) nor an audit session id"
            ))
        })?)),
    };
    if let Some(kind) = f.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(Status::invalid_argument(format!(
            "unknown kind {kind:?}; kinds are {}",
            KINDS.join(", ")
        )));
    }
    Ok(EventFilter {
        host: some(f.host),
        identity: some(f.identity),
        session,
        kinds: f.kinds,
        ..EventFilter::default()
    })
}

/// Page tokens are `TIME.ROW` of the last event returned; clients treat them as opaque.
fn parse_token(token: &str) -> Result<Cursor, Status> {
    if token.is_empty() {
        return Ok(Cursor::default());
    }
    token
        .split_once('.')
        .and_then(|(t, r)| {
            Some(Cursor {
                time_unix_nano: t.parse().ok()?,
                row: r.parse().ok()?,
            })
        })
        .ok_or_else(|| Status::invalid_argument(format!("page_token {token:?} is not one of ours")))
}

#[tonic::async_trait]
impl Query for QueryService {
    type TailStream = ReceiverStream<Result<StoredEvent, Status>>;
    type ReplayStream = ReceiverStream<Result<StoredEvent, Status>>;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let request = request.into_inner();
        let mut filter = event_filter(request.filter)?;
        // Subscribed before reading how far the store reaches: every commit after that
        // point is announced, so the switch from history to live misses nothing.
        let mut commits = self.live.subscribe();
        let store = Arc::clone(&self.store);
        let reach = blocking(move || store.last_row()).await?;
        let (tx, rx) = mpsc::channel(PAGE);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut up_to = reach;
            filter.since_unix_nano = request.since_unix_nano;
            if request.since_unix_nano == 0 {
                cursor = reach;
            }
            loop {
                loop {
                    let (store, f) = (Arc::clone(&store), filter.clone());
                    let rows =
                        match blocking(move || store.after_row(&f, cursor, up_to, PAGE)).await {
                            Ok(rows) => rows,
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        };
                    let done = rows.len() < PAGE;
                    for (row, event) in rows {
                        cursor = row;
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    if done {
                        break;
                    }
                }
                // History (rows up to `reach`) is out; from here on every row is live,
                // whatever its time.
                cursor = cursor.max(up_to);
                filter.since_unix_nano = 0;
                tokio::select! {
                    () = tx.closed() => return,
                    commit = commits.recv() => match commit {
                        Ok(row) => up_to = row,
                        // A tailer that fell behind reads what it missed from the store.
                        Err(broadcast::error::RecvError::Lagged(_)) => up_to = i64::MAX,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let request = request.into_inner();
        let mut filter = event_filter(request.filter)?;
        filter.since_unix_nano = request.since_unix_nano;
        filter.until_unix_nano = request.until_unix_nano;
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        } as usize;
        let after = parse_token(&request.page_token)?;
        let store = Arc::clone(&self.store);
        let mut rows = blocking(move || store.search(&filter, after, limit + 1)).await?;
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|(c, _)| format!("{}.{}", c.time_unix_nano, c.row))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(SearchResponse {
            events: rows.into_iter().map(|(_, e)| e).collect(),
            next_page_token,
        }))
    }

    async fn sessions(
        &self,
        request: Request<SessionsRequest>,
    ) -> Result<Response<SessionsResponse>, Status> {
        let request = request.into_inner();
        let store = Arc::clone(&self.store);
        let sessions =
            blocking(move || store.sessions(&request.host, request.since_unix_nano)).await?;
        Ok(Response::new(SessionsResponse { sessions }))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<Self::ReplayStream>, Status> {
        let session = request.into_inner().session;
        if session.split(':').count() != 3 {
            return Err(Status::invalid_argument(format!(
                "session {session:?} is not a session key (HOST:SESSIONID:ROOT_START)"
            )));
        }
        let filter = EventFilter {
            session: Some(SessionMatch::Key(session)),
            kinds: vec!["tty".into()],
            ..EventFilter::default()
        };
        let (tx, rx) = mpsc::channel(PAGE);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let mut after = Cursor::default();
            loop {
                let (store, f) = (Arc::clone(&store), filter.clone());
                let rows = match blocking(move || store.search(&f, after, PAGE)).await {
                    Ok(rows) => rows,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let done = rows.len() < PAGE;
                for (cursor, event) in rows {
                    after = cursor;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let request = request.into_inner();
        let store = Arc::clone(&self.store);
        let chains = blocking(move || store.verify(&request.host, &request.chain_id)).await?;
        for c in chains.iter().filter(|c| !c.ok) {
            tracing::error!(host = %c.host, chain = %c.chain_id, first_bad_seq = ?c.first_bad_seq, reason = %c.reason, "stored chain fails verification");
        }
        Ok(Response::new(VerifyResponse { chains }))
    }
}
