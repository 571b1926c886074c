//! The collector's side of mutual TLS, as a connection stream for tonic's
//! `Server::serve_with_incoming`. tonic's own TLS server logs a failed handshake and drops
//! it; the collector must instead raise an alert for every certificate it refused, naming
//! what the certificate claimed. So the handshakes run here: one task each, bounded in time
//! so a silent or slow client holds nothing up; each success becomes a [`Conn`] whose
//! [`ConnInfo`] handlers read from their requests' extensions, each failure a
//! [`HandshakeFailure`] sent to whoever subscribed. Connections over the
//! [`ConnectionLimits`] are closed as they are accepted.

use std::{
    cell::RefCell,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::{
    CertInfo, OfferedCert, Peer, PkiError,
    limit::{ConnectionLimits, Connections, Refusals, Slot},
};

/// How long a client has to complete its handshake before it is dropped (and reported).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; past this, new connections wait in the listen backlog.
/// Each one is small and ends within the handshake timeout, so this only caps what a flood
/// of idle connections can hold.
const MAX_HANDSHAKES: usize = 1024;

/// Established connections not yet taken by the server.
const QUEUE: usize = 64;

/// Whether a client must present a certificate to finish its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    Required,
    /// A client may connect without one (a host enrolling with a join token): whoever
    /// serves then refuses every call of such a connection that needs an identity. A
    /// certificate that is presented must still verify.
    Optional,
}

/// The rustls configuration of a collector: its certificate chain and key, and client
/// certificates chaining to a CA of `ca_pem` (more than one during a CA change), required
/// or optional. ALPN h2 only. Refuses a server certificate that is not a collector's.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    client_cert: ClientCert,
) -> Result<Arc<ServerConfig>, PkiError> {
    let info = CertInfo::from_pem(cert_pem)?;
    if !matches!(info.peer, Peer::Collector { .. }) {
        return Err(PkiError::Identity(format!(
            "the server certificate is {}, not a collector's",
            info.peer
        )));
    }
    let provider = Arc::new(ring::default_provider());
    let roots = crate::roots(ca_pem)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match client_cert {
        ClientCert::Required => builder,
        ClientCert::Optional => builder.allow_unauthenticated(),
    };
    let inner = builder.build().map_err(|e| PkiError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Key(format!("no PEM private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(RecordOffered(inner)))
        .with_single_cert(crate::certs_from_pem(cert_pem)?, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

tokio::task_local! {
    /// The client certificate offered in this task's handshake. rustls calls the verifier
    /// synchronously while the handshake future is polled, and keeps nothing of a refused
    /// certificate, so the verifier leaves it here for the handshake task to report.
    static OFFERED: RefCell<Option<CertificateDer<'static>>>;
}

/// The webpki client verifier, which also records the end-entity certificate it is shown.
#[derive(Debug)]
struct RecordOffered(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for RecordOffered {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Outside a handshake task (a config used elsewhere) there is nowhere to record to.
        let _ = OFFERED.try_with(|offered| {
            *offered.borrow_mut() = Some(end_entity.clone().into_owned());
        });
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What a handler knows of its connection, from `request.extensions().get::<ConnInfo>()`.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote_addr: SocketAddr,
    /// The client's verified certificate; `None` on the plaintext (insecure mode) listener,
    /// and on a TLS connection made without one where certificates are optional.
    pub cert: Option<Arc<CertInfo>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// The verified peer; `None` in insecure mode and without a certificate.
    #[must_use]
    pub fn peer(&self) -> Option<&Peer> {
        self.cert.as_deref().map(|c| &c.peer)
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// TLS refused it: no client certificate, one from another CA or expired, a bad
    /// signature, or bytes that are not TLS at all.
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// The connection failed or was closed during the handshake.
    #[error("I/O: {0}")]
    Io(io::Error),
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    /// The certificate verified, but names no valid recorder identity.
    #[error("refused after the handshake: {0}")]
    Identity(PkiError),
}

impl From<io::Error> for HandshakeError {
    /// tokio-rustls hands rustls's errors over inside an `io::Error`; unwrap them.
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => HandshakeError::Tls(tls.clone()),
            None => HandshakeError::Io(e),
        }
    }
}

/// A refused connection.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub remote_addr: SocketAddr,
    pub error: HandshakeError,
    /// The certificate the client presented, read as far as it can be (it was refused, so
    /// nothing in it is vouched for); `None` when it presented none.
    pub offered: Option<OfferedCert>,
}

/// An accepted connection: TLS with a verified client certificate, or plaintext in insecure
/// mode.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Its place in the count of connections, until the server drops it.
    _slot: Slot,
}

enum Io {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accepts mutual-TLS connections for a collector.
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    failures: Option<mpsc::Sender<HandshakeFailure>>,
    limits: ConnectionLimits,
}

impl TlsAcceptor {
    /// An acceptor with the collector's CA, certificate and key, PEM ([`server_config`]).
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsAcceptor, PkiError> {
        TlsAcceptor::with_client_cert(ca_pem, cert_pem, key_pem, ClientCert::Required)
    }

    /// An acceptor whose clients may connect without a certificate ([`ClientCert`]).
    pub fn with_client_cert(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        client_cert: ClientCert,
    ) -> Result<TlsAcceptor, PkiError> {
        Ok(TlsAcceptor {
            acceptor: server_config(ca_pem, cert_pem, key_pem, client_cert)?.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            failures: None,
            limits: ConnectionLimits::NONE,
        })
    }

    /// How long a client has for its handshake ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsAcceptor {
        self.handshake_timeout = timeout;
        self
    }

    /// Sends every failed handshake to `failures`. A failure that finds the channel full is
    /// dropped (and logged): a flood of bad clients must not stall accepting good ones.
    #[must_use]
    pub fn report_failures(mut self, failures: mpsc::Sender<HandshakeFailure>) -> TlsAcceptor {
        self.failures = Some(failures);
        self
    }

    /// Closes every connection over `limits` as it is accepted ([`ConnectionLimits::NONE`]
    /// unless set).
    #[must_use]
    pub fn limit_connections(mut self, limits: ConnectionLimits) -> TlsAcceptor {
        self.limits = limits;
        self
    }

    /// Starts accepting on `listener`; hand the stream to `Server::serve_with_incoming`.
    /// Accepting stops when the stream is dropped. Needs a Tokio runtime.
    #[must_use]
    pub fn incoming(self, listener: TcpListener) -> Incoming {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(async move {
            let mut handshakes = JoinSet::new();
            let mut admission = Admission::new(self.limits);
            loop {
                tokio::select! {
                    accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => {
                        let Some((tcp, remote_addr, slot)) = admission.admit(accepted).await else {
                            continue;
                        };
                        let (acceptor, tx) = (self.acceptor.clone(), tx.clone());
                        let (timeout, failures) = (self.handshake_timeout, self.failures.clone());
                        handshakes.spawn(async move {
                            match handshake(acceptor, tcp, remote_addr, slot, timeout).await {
                                Ok(conn) => {
                                    // Err: the server is gone; the connection goes with it.
                                    let _ = tx.send(conn).await;
                                }
                                Err(failure) => report(failures.as_ref(), failure),
                            }
                        });
                    }
                    Some(_) = handshakes.join_next() => {}
                }
            }
        });
        Incoming { rx, task }
    }
}

/// Plaintext connections, for the collector's explicit loopback-only insecure mode: the
/// same stream and [`ConnInfo`] as [`TlsAcceptor::incoming`], with no certificate, and the
/// same `limits`.
#[must_use]
pub fn plaintext_incoming(listener: TcpListener, limits: ConnectionLimits) -> Incoming {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(async move {
        let mut admission = Admission::new(limits);
        loop {
            let Some((tcp, remote_addr, slot)) = admission.admit(listener.accept().await).await
            else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let conn = Conn {
                io: Io::Plain(tcp),
                info: ConnInfo {
                    remote_addr,
                    cert: None,
                    tls: false,
                },
                _slot: slot,
            };
            if tx.send(conn).await.is_err() {
                return;
            }
        }
    });
    Incoming { rx, task }
}

/// What an accept loop lets in.
struct Admission {
    connections: Connections,
    refusals: Refusals,
}

impl Admission {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            connections: Connections::new(limits),
            refusals: Refusals::default(),
        }
    }

    /// The accepted connection with its place in the count; `None` for an error (after
    /// `accepted_or_wait`'s pause) or a connection over a limit, which is dropped, and so
    /// closed, here.
    async fn admit(
        &mut self,
        accepted: io::Result<(TcpStream, SocketAddr)>,
    ) -> Option<(TcpStream, SocketAddr, Slot)> {
        let (tcp, remote_addr) = accepted_or_wait(accepted).await?;
        match self.connections.admit(remote_addr.ip()) {
            Ok(slot) => Some((tcp, remote_addr, slot)),
            Err(over) => {
                self.refusals.refused(remote_addr, over);
                None
            }
        }
    }
}

/// The accepted connection; or, for an error, `None` after a pause when the error is about
/// the process rather than the connection (out of file descriptors: retrying at once
/// would spin).
async fn accepted_or_wait(
    accepted: io::Result<(TcpStream, SocketAddr)>,
) -> Option<(TcpStream, SocketAddr)> {
    match accepted {
        Ok(conn) => Some(conn),
        Err(e) => {
            if !matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::Interrupted
            ) {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    }
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    slot: Slot,
    timeout: Duration,
) -> Result<Conn, HandshakeFailure> {
    let _ = tcp.set_nodelay(true);
    OFFERED
        .scope(RefCell::new(None), async move {
            let error = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Err(_) => HandshakeError::Timeout(timeout),
                Ok(Err(e)) => HandshakeError::from(e),
                Ok(Ok(tls)) => {
                    // A leaf is there unless the verifier let the client go without one.
                    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    match leaf.map(|der| CertInfo::from_der(der)) {
                        Some(Ok(cert)) => {
                            return Ok(Conn {
                                io: Io::Tls(Box::new(tls)),
                                info: ConnInfo {
                                    remote_addr,
                                    cert: Some(Arc::new(cert)),
                                    tls: true,
                                },
                                _slot: slot,
                            });
                        }
                        Some(Err(e)) => HandshakeError::Identity(e),
                        None => {
                            return Ok(Conn {
                                io: Io::Tls(Box::new(tls)),
                                info: ConnInfo {
                                    remote_addr,
                                    cert: None,
                                    tls: true,
                                },
                                _slot: slot,
                            });
                        }
                    }
                }
            };
            let offered = OFFERED
                .with(|offered| offered.borrow_mut().take())
                .map(|der| OfferedCert::from_der(&der));
            Err(HandshakeFailure {
                remote_addr,
                error,
                offered,
            })
        })
        .await
}

fn report(failures: Option<&mpsc::Sender<HandshakeFailure>>, failure: HandshakeFailure) {
    tracing::debug!(
        remote = %failure.remote_addr,
        error = %failure.error,
        "TLS handshake refused"
    );
    if let Some(failures) = failures
        && let Err(mpsc::error::TrySendError::Full(failure)) = failures.try_send(failure)
    {
        tracing::warn!(
            remote = %failure.remote_addr,
            error = %failure.error,
            "handshake failure not reported: the subscriber is behind"
        );
    }
}

/// Accepted connections, for `Server::serve_with_incoming`. Dropping it stops accepting
/// and ends the handshakes in progress.
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    task: JoinHandle<()>,
}

impl Stream for Incoming {
    type Item = Result<Conn, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|conn| conn.map(Ok))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}
