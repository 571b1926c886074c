//! The collector: receives agents' chains over gRPC, verifies and stores them, and serves
//! queries over the stored evidence. One module per stage: ingest (checks each stream),
//! writer (group commit), store (`SQLite` today), query.

pub mod cli;
pub mod ingest;
pub mod query;
pub mod store;
pub mod writer;

use std::sync::Arc;

use proto::v1::{ingest_server::IngestServer, query_server::QueryServer};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{ingest::IngestService, query::QueryService, store::Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Commits a tailer may fall behind by before it rereads from the store.
const LIVE_BACKLOG: usize = 1024;

/// Serves Ingest and Query on `listener` until the server fails.
pub async fn serve(listener: TcpListener, store: Arc<dyn Store>) -> Result<(), Error> {
    let (live, _) = broadcast::channel(LIVE_BACKLOG);
    let writer = writer::spawn(Arc::clone(&store), live.clone())?;
    let ingest = IngestServer::new(IngestService::new(Arc::clone(&store), writer))
        .max_decoding_message_size(ingest::MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(ingest)
        .add_service(QueryServer::new(QueryService::new(store, live)))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
