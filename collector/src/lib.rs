//! The collector: receives agents' chains over gRPC, verifies and stores them, serves
//! queries over the stored evidence, and keeps the just-in-time grants agents enforce.
//!
//! One module per stage, and data flows one way: `ingest` checks each agent stream and
//! hands batches to the `writer`, the one committer to the `store`; `grants` decides grant
//! changes and hands them to the writer as closures; `query` reads the store, and `verify`
//! checks stored chains above the `Store` trait. Domain errors (`error`) become gRPC
//! statuses only at the RPC edges (`ingest`, `grants::service`, `query`). This file wires
//! them together and nothing else.

pub mod cli;
mod error;
mod grants;
mod ingest;
pub mod policy;
mod query;
pub mod store;
mod verify;
mod writer;

#[cfg(test)]
mod layout;
#[cfg(test)]
mod testing;

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
    grants::{service::GrantsService, views::Views},
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

/// Opens the store a `--store` URL names.
pub fn open_store(url: &str) -> Result<Arc<dyn Store>, store::StoreError> {
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(Arc::new(store::sqlite::Sqlite::open(path)?)),
        _ => Err(store::StoreError::Url(url.to_owned())),
    }
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
