//! The collector: receives agents' chains over gRPC, verifies and stores them, serves
//! queries over the stored evidence, and keeps the just-in-time grants agents enforce. One
//! module per stage: ingest (checks each stream, pushes grant views), writer (group commit),
//! store (`SQLite` today), query, grants (the operators' service), policy.

pub mod cli;
pub mod grants;
pub mod ingest;
pub mod policy;
pub mod query;
pub mod store;
pub mod writer;

use std::sync::Arc;

use proto::v1::{
    Policy, grants_server::GrantsServer, ingest_server::IngestServer, query_server::QueryServer,
};
use tokio::{
    net::TcpListener,
    sync::{broadcast, watch},
};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    grants::{GrantsService, Views},
    ingest::IngestService,
    query::QueryService,
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Commits a tailer may fall behind by before it rereads from the store.
const LIVE_BACKLOG: usize = 1024;

/// Serves Ingest, Query and Grants on `listener` until the server fails; agents are sent
/// `policy`.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    policy: Policy,
) -> Result<(), Error> {
    let (live, _) = broadcast::channel(LIVE_BACKLOG);
    let (grants_changed, _) = watch::channel(());
    let writer = writer::spawn(Arc::clone(&store), live.clone(), grants_changed.clone())?;
    let views = Views::new(Arc::clone(&store), policy, grants_changed);
    let ingest = IngestServer::new(IngestService::new(
        Arc::clone(&store),
        writer.clone(),
        views,
    ))
    .max_decoding_message_size(ingest::MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(ingest)
        .add_service(GrantsServer::new(GrantsService::new(
            Arc::clone(&store),
            writer,
        )))
        .add_service(QueryServer::new(QueryService::new(store, live)))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
