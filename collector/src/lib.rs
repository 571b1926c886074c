//! The collector: receives agents' chains over gRPC, verifies and stores them, serves
//! queries over the stored evidence, and keeps the just-in-time grants agents enforce.
//!
//! One module per stage, and data flows one way: `ingest` checks each agent stream and
//! hands batches to the `writer`, the one committer to the `store`; `grants` decides grant
//! changes and hands them to the writer as closures; `query` reads the store, and `verify`
//! checks stored chains above the `Store` trait. Domain errors (`error`) become gRPC
//! statuses only at the RPC edges (`ingest`, `grants::service`, `query`). This file wires
//! them together and nothing else.

mod admin;
mod auth;
pub mod cli;
mod error;
mod grants;
mod ingest;
mod liveness;
pub mod policy;
mod query;
mod retention;
pub mod store;
mod verify;
pub mod witness;
mod writer;

#[cfg(test)]
mod layout;
#[cfg(test)]
mod testing;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use pki::{Ca, ClientCert, ConnectionLimits, HandshakeFailure, TlsAcceptor, plaintext_incoming};
use proto::v1::{
    Policy, admin_server::AdminServer, enrollment_server::EnrollmentServer,
    grants_server::GrantsServer, ingest_server::IngestServer, query_server::QueryServer,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

pub use crate::retention::Retention;
use crate::{
    admin::{AdminService, EnrollmentService, Hosts},
    auth::{Gate, Revoked},
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
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("the witness key: {0}")]
    Witness(#[from] witness::WitnessError),
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The TLS files of a connection to a PostgreSQL store, PEM: the CA certificates its
/// server's certificate must chain to, and the certificate and key the collector presents.
#[derive(Clone, Debug, Default)]
pub struct StoreTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl StoreTls {
    /// The rustls settings, or `None` without a CA. A certificate and key need a CA: a
    /// client that presents one to an unchecked server could be talking to anyone.
    fn config(&self) -> Result<Option<pki::rustls::ClientConfig>, store::StoreError> {
        let read = |what, file: &Path| {
            std::fs::read_to_string(file).map_err(|e| tls_error(what, file, &e))
        };
        let client = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                private_key(key)?;
                Some((read("the certificate", cert)?, read("the key", key)?))
            }
            (None, None) => None,
            (Some(file), None) | (None, Some(file)) => {
                return Err(tls_error(
                    "a certificate and its key",
                    file,
                    &"give both, --store-cert and --store-key",
                ));
            }
        };
        let Some(ca) = &self.ca else {
            return match &self.cert {
                Some(cert) => Err(tls_error(
                    "the certificate",
                    cert,
                    &"a certificate needs a CA to check the server with (--store-ca)",
                )),
                None => Ok(None),
            };
        };
        let ca_pem = read("the CA to check the server with", ca)?;
        let client = client
            .as_ref()
            .map(|(cert, key)| (cert.as_str(), key.as_str()));
        pki::server_checking_config(&ca_pem, client)
            .map(Some)
            .map_err(|e| tls_error("the TLS settings", self.cert.as_ref().unwrap_or(ca), &e))
    }
}

/// What is wrong with `file`, one of the TLS files of the store's connection.
fn tls_error(what: &'static str, file: &Path, why: &dyn std::fmt::Display) -> store::StoreError {
    store::StoreError::Tls {
        what,
        file: file.to_owned(),
        why: why.to_string(),
    }
}

/// Refuses a key that others may read, as libpq does: mode 0600 or less, or 0640 or less
/// when root owns it (its group then being the collector's).
fn private_key(key: &Path) -> Result<(), store::StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(key).map_err(|e| tls_error("the key", key, &e))?;
    let others = if meta.uid() == 0 { 0o037 } else { 0o077 };
    if meta.mode() & others != 0 {
        return Err(tls_error(
            "the key",
            key,
            &format!(
                "mode {:o} lets others read it: make it 0600, or 0640 owned by root",
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

/// Opens the store a `--store` URL names; a PostgreSQL one over TLS as `tls` says.
pub fn open_store(url: &str, tls: &StoreTls) -> Result<Arc<dyn Store>, store::StoreError> {
    if is_postgres(url) {
        return Ok(Arc::new(store::postgres::Postgres::open(
            url,
            tls.config()?,
        )?));
    }
    if let Some(file) = [&tls.ca, &tls.cert, &tls.key].into_iter().flatten().next() {
        return Err(tls_error(
            "TLS",
            file,
            &"applies to a PostgreSQL store only",
        ));
    }
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(Arc::new(store::sqlite::Sqlite::open(path)?)),
        _ => Err(store::StoreError::Url(url.to_owned())),
    }
}

/// How clients reach the collector.
pub enum Transport {
    /// Mutual TLS under the deployment's CA (docs/pki.md). The CA's key, when the collector
    /// has it, signs the certificates of enrolling hosts.
    Tls {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
        ca: Option<Box<Ca>>,
        /// Its key cosigns hosts' checkpoints.
        witness: Arc<witness::Witness>,
    },
    /// No TLS, no identities: for a collector on loopback only, started so on purpose.
    InsecurePlaintext,
}

impl Transport {
    /// The collector's PKI directory: `ca.pem`, `collector.pem`, `collector.key`,
    /// `witness.pem` and `witness.key`, and `ca.key` when it enrolls hosts. The latest
    /// checkpoint of the collector's own log is kept in `state_dir`.
    pub fn from_dir(dir: &Path, state_dir: &Path) -> Result<Self, Error> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| pki::PkiError::File {
                path: dir.join(name).display().to_string(),
                message: e.to_string(),
            })
        };
        let ca = if dir.join("ca.key").exists() {
            Some(Box::new(Ca::load(dir)?))
        } else {
            None
        };
        let ca_pem = read("ca.pem")?;
        let witness =
            Arc::new(witness::Witness::load(dir, &ca_pem)?.keep_checkpoint_in(state_dir)?);
        Ok(Self::Tls {
            ca_pem,
            cert_pem: read("collector.pem")?,
            key_pem: read("collector.key")?,
            ca,
            witness,
        })
    }
}

/// How many connections and calls the collector serves at once (docs/limits.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections, handshakes included, in total and from one address: one over either is
    /// closed as it is accepted.
    pub connections: ConnectionLimits,
    /// Calls (HTTP/2 streams) open at once on one connection, as the server tells each
    /// client in its HTTP/2 settings: a client queues more until one ends.
    pub streams_per_connection: u32,
}

impl Limits {
    /// An agent holds one connection and one stream; an operator's command one connection.
    /// 1,000 connections stay within the usual 1,024 open files of a process; 100 from one
    /// address leave room for several agents behind one NAT address and an operator's
    /// commands, and stop one address from holding them all.
    pub const DEFAULT: Limits = Limits {
        connections: ConnectionLimits {
            total: 1000,
            per_peer: 100,
        },
        streams_per_connection: 100,
    };
}

/// Handshake failures queued for recording; past it they are logged and dropped.
const FAILURES_QUEUE: usize = 256;

/// Serves Ingest, Query, Grants, Admin and Enrollment on `listener`, within `limits`, until
/// the server fails; agents are sent `policy`.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    policy: Policy,
    transport: Transport,
    retention: Retention,
    silent_after: std::time::Duration,
    limits: Limits,
) -> Result<(), Error> {
    let witness = match &transport {
        Transport::Tls { witness, .. } => Some(Arc::clone(witness)),
        Transport::InsecurePlaintext => None,
    };
    let (live, _) = watch::channel(());
    let (grants_changed, _) = watch::channel(());
    let writer = writer::spawn(
        Arc::clone(&store),
        witness.clone(),
        live.clone(),
        grants_changed.clone(),
    )?;
    tokio::spawn(retention::run(
        retention,
        Arc::clone(&store),
        writer.clone(),
    ));
    let known = store
        .chains()?
        .into_iter()
        .filter(|c| c.host != store::COLLECTOR_HOST)
        .map(|c| c.host);
    let liveness = Arc::new(liveness::Liveness::new(known, silent_after));
    tokio::spawn(liveness::watch(
        Arc::clone(&liveness),
        Arc::clone(&store),
        writer.clone(),
    ));
    let gate = Gate::new(writer.clone());
    let revoked = Revoked::new(store.revoked_hosts()?.into_iter().map(|r| r.host));
    let require_approval = policy.require_approval;
    follow_other_collectors(&store, grants_changed.clone(), revoked.clone())?;
    let views = Views::new(Arc::clone(&store), policy, grants_changed);
    let (incoming, ca) = match transport {
        Transport::Tls {
            ca_pem,
            cert_pem,
            key_pem,
            ca,
            ..
        } => {
            let (failures, failed) = mpsc::channel(FAILURES_QUEUE);
            tokio::spawn(record_failures(failed, gate.clone()));
            // Optional at the handshake, so a host can enroll with a token; every call but
            // that one requires a certificate (`auth::caller`).
            let acceptor =
                TlsAcceptor::with_client_cert(&ca_pem, &cert_pem, &key_pem, ClientCert::Optional)?
                    .report_failures(failures)
                    .limit_connections(limits.connections);
            (acceptor.incoming(listener), ca.map(|ca| Arc::new(*ca)))
        }
        Transport::InsecurePlaintext => (plaintext_incoming(listener, limits.connections), None),
    };
    let hosts = Hosts {
        store: Arc::clone(&store),
        writer: writer.clone(),
        gate: gate.clone(),
        revoked: revoked.clone(),
        ca,
    };
    let ingest = IngestServer::new(IngestService::new(
        Arc::clone(&store),
        witness.clone(),
        writer.clone(),
        views.clone(),
        gate.clone(),
        revoked,
        Arc::clone(&liveness),
    ))
    .max_decoding_message_size(ingest::MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.streams_per_connection)
        .add_service(ingest)
        .add_service(GrantsServer::new(GrantsService::new(
            Arc::clone(&store),
            writer,
            gate.clone(),
            views,
            require_approval,
        )))
        .add_service(QueryServer::new(QueryService::new(
            store, &live, gate, witness, liveness,
        )))
        .add_service(EnrollmentServer::new(EnrollmentService(hosts.clone())))
        .add_service(AdminServer::new(AdminService(hosts)))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// Another collector on the same database changed grants: this one's agents are sent fresh
/// views at once, as for its own changes. It revoked a host: this one refuses the host too.
fn follow_other_collectors(
    store: &Arc<dyn Store>,
    grants_changed: watch::Sender<()>,
    revoked: Revoked,
) -> Result<(), store::StoreError> {
    let reader = Arc::clone(store);
    store.follow_changes(Box::new(move |changed| match changed {
        store::Changed::Grants => {
            grants_changed.send_replace(());
        }
        store::Changed::RevokedHosts => match reader.revoked_hosts() {
            Ok(hosts) => {
                for h in hosts {
                    revoked.insert(h.host);
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the hosts another collector revoked");
            }
        },
    }))
}

/// Chains every refused handshake in which a certificate was presented (another CA,
/// expired, no identity); the others (no certificate, not TLS at all) are logged.
async fn record_failures(mut failed: mpsc::Receiver<HandshakeFailure>, gate: Gate) {
    while let Some(failure) = failed.recv().await {
        let Some(offered) = &failure.offered else {
            tracing::info!(remote = %failure.remote_addr, error = %failure.error, "TLS handshake refused");
            continue;
        };
        let who = match &offered.peer {
            Ok(peer) => peer.to_string(),
            Err(_) => format!("certificate {:?}", offered.subject),
        };
        let host = match &offered.peer {
            Ok(pki::Peer::Agent { host }) => host.as_str(),
            _ => "",
        };
        gate.refused(
            &format!("{who} from {}", failure.remote_addr),
            host,
            &format!("TLS handshake refused: {}", failure.error),
        )
        .await;
    }
}
