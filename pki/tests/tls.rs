//! Mutual TLS end to end: a real tonic server on loopback behind `TlsAcceptor`, real clients.
//! Every refused client must fail on its side, be reported on the server's, and leave the
//! server serving the next good client.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    time::{Duration, Instant, SystemTime},
};

use pki::{
    AgentKey, Ca, ClientIdentity, ConnInfo, HandshakeError, HandshakeFailure, Issued, Peer, Role,
    TlsAcceptor, Validity,
};
use proto::v1::{
    ChainVerdict, EvidenceItem, EvidenceRequest, ExportChunk, ExportRequest, HostsRequest,
    HostsResponse, ReplayRequest, SearchRequest, SearchResponse, SessionsRequest, SessionsResponse,
    StoredEvent, TailRequest, VerifyRequest, VerifyResponse,
    query_client::QueryClient,
    query_server::{Query, QueryServer},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::Stream;
use tonic::{
    Request, Response, Status,
    transport::{Certificate, ClientTlsConfig, Endpoint, Server},
};

/// The handshake bound of the test server: short, so the silent-client test is quick.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers Verify with the caller's identity URI (as `host`) and address (as `chain_id`),
/// read from the connection, never from the request.
struct Echo;

type Events = Pin<Box<dyn Stream<Item = Result<StoredEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Query for Echo {
    type TailStream = Events;
    type ReplayStream = Events;
    type EvidenceStream = Pin<Box<dyn Stream<Item = Result<EvidenceItem, Status>> + Send>>;
    type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportChunk, Status>> + Send>>;

    async fn evidence(
        &self,
        _: Request<EvidenceRequest>,
    ) -> Result<Response<Self::EvidenceStream>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn hosts(&self, _: Request<HostsRequest>) -> Result<Response<HostsResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn export(
        &self,
        _: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn tail(&self, _: Request<TailRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn search(&self, _: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn sessions(
        &self,
        _: Request<SessionsRequest>,
    ) -> Result<Response<SessionsResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn replay(&self, _: Request<ReplayRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        let info = request
            .extensions()
            .get::<ConnInfo>()
            .ok_or_else(|| Status::internal("no ConnInfo"))?;
        let peer = info
            .peer()
            .ok_or_else(|| Status::unauthenticated("no peer"))?;
        Ok(Response::new(VerifyResponse {
            chains: vec![ChainVerdict {
                host: peer.uri(),
                chain_id: info.remote_addr.to_string(),
                ..ChainVerdict::default()
            }],
            ..VerifyResponse::default()
        }))
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    ca: Ca,
    addr: SocketAddr,
    failures: mpsc::Receiver<HandshakeFailure>,
    good: ClientIdentity,
}

fn hour() -> Validity {
    Validity::from_now(Duration::from_hours(1))
}

fn identity(ca: &Ca, issued: Issued) -> ClientIdentity {
    ClientIdentity {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    }
}

/// A CA, a collector certificate for `localhost` and 127.0.0.1, and the Echo server on an
/// ephemeral loopback port.
async fn start() -> Fixture {
    pki::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::init(&tmp.path().join("ca")).unwrap();
    let server = ca
        .issue_collector(
            "c1",
            &["localhost".into()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            hour(),
        )
        .unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, failures) = mpsc::channel(64);
    let incoming = TlsAcceptor::new(ca.cert_pem(), &server.cert_pem, &server.key_pem)
        .unwrap()
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .report_failures(tx)
        .incoming(listener);
    tokio::spawn(
        Server::builder()
            .add_service(QueryServer::new(Echo))
            .serve_with_incoming(incoming),
    );
    let good = identity(
        &ca,
        ca.issue_operator("alice", Role::Auditor, hour()).unwrap(),
    );
    Fixture {
        tmp,
        ca,
        addr,
        failures,
        good,
    }
}

impl Fixture {
    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn endpoint(&self, identity: &ClientIdentity) -> Endpoint {
        pki::endpoint(&self.url(), identity, None).unwrap()
    }

    /// The next reported failure; there must be one soon.
    async fn failure(&mut self) -> HandshakeFailure {
        tokio::time::timeout(HANDSHAKE_TIMEOUT * 3, self.failures.recv())
            .await
            .expect("no failure reported")
            .expect("failure channel closed")
    }

    /// The server still serves a good client, and reported nothing for it.
    async fn still_serves(&mut self) {
        let peer = call(self.endpoint(&self.good.clone())).await.unwrap();
        assert_eq!(
            peer,
            Peer::Operator {
                name: "alice".into(),
                role: Role::Auditor
            }
        );
        assert!(self.failures.try_recv().is_err(), "a good client reported");
    }
}

/// Connects and calls Verify: the peer the server saw, or the client's error.
async fn call(endpoint: Endpoint) -> Result<Peer, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let response = QueryClient::new(channel)
        .verify(VerifyRequest::default())
        .await
        .map_err(|e| format!("call: {e:?}"))?;
    let uri = &response.get_ref().chains[0].host;
    Ok(Peer::from_uri(uri).unwrap())
}

#[tokio::test]
async fn operators_and_agents_are_seen_by_handlers() {
    let mut f = start().await;
    f.still_serves().await;

    let agent = identity(&f.ca, f.ca.issue_agent("web-1", hour()).unwrap());
    assert_eq!(
        call(f.endpoint(&agent)).await.unwrap(),
        Peer::Agent {
            host: "web-1".into()
        }
    );

    // Enrolled the way hosts enroll: key made here, CSR signed for the token's host.
    let key = AgentKey::generate().unwrap();
    let cert_pem =
        f.ca.sign_agent_csr(key.csr_pem.as_bytes(), "db-7", hour())
            .unwrap();
    let enrolled = ClientIdentity {
        ca_pem: f.ca.cert_pem().to_owned(),
        cert_pem,
        key_pem: key.key_pem,
    };
    assert_eq!(
        call(f.endpoint(&enrolled)).await.unwrap(),
        Peer::Agent {
            host: "db-7".into()
        }
    );

    // By IP address, which the collector certificate also names.
    let by_ip = pki::endpoint(&format!("https://{}", f.addr), &f.good, None).unwrap();
    assert!(call(by_ip).await.is_ok());
    assert!(f.failures.try_recv().is_err());
}

#[tokio::test]
async fn no_client_certificate() {
    let mut f = start().await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(f.ca.cert_pem()))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(f.url())
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let err = call(endpoint).await.unwrap_err();
    eprintln!("client: {err}");
    let failure = f.failure().await;
    eprintln!("server: {failure:?}");
    assert!(
        matches!(
            failure.error,
            HandshakeError::Tls(pki::rustls::Error::NoCertificatesPresented)
        ),
        "{:?}",
        failure.error
    );
    assert!(failure.offered.is_none());
    assert!(failure.remote_addr.ip().is_loopback());
    f.still_serves().await;
}

#[tokio::test]
async fn a_certificate_of_another_ca() {
    let mut f = start().await;
    let tmp = tempfile::tempdir().unwrap();
    let other = Ca::init(&tmp.path().join("other")).unwrap();
    let mallory = other
        .issue_operator("mallory", Role::Admin, hour())
        .unwrap();
    // Trusts the real CA for the server; presents the other CA's certificate.
    let intruder = ClientIdentity {
        ca_pem: f.ca.cert_pem().to_owned(),
        cert_pem: mallory.cert_pem,
        key_pem: mallory.key_pem,
    };
    let err = call(f.endpoint(&intruder)).await.unwrap_err();
    eprintln!("client: {err}");
    let failure = f.failure().await;
    eprintln!("server: {failure:?}");
    assert!(
        matches!(
            failure.error,
            HandshakeError::Tls(pki::rustls::Error::InvalidCertificate(
                pki::rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{:?}",
        failure.error
    );
    let offered = failure.offered.expect("the offered certificate");
    assert_eq!(
        offered.peer,
        Ok(Peer::Operator {
            name: "mallory".into(),
            role: Role::Admin
        })
    );
    assert!(offered.subject.unwrap().contains("mallory"));
    assert!(offered.issuer.unwrap().contains("recorder CA"));
    assert_eq!(offered.serial_hex.unwrap().len(), 32);
    f.still_serves().await;
}

#[tokio::test]
async fn an_expired_certificate() {
    let mut f = start().await;
    let now = SystemTime::now();
    let day = Duration::from_hours(24);
    let expired =
        f.ca.issue_operator(
            "old",
            Role::Approver,
            Validity {
                not_before: now - 2 * day,
                not_after: now - day,
            },
        )
        .unwrap();
    let err = call(f.endpoint(&identity(&f.ca, expired)))
        .await
        .unwrap_err();
    eprintln!("client: {err}");
    let failure = f.failure().await;
    eprintln!("server: {failure:?}");
    let HandshakeError::Tls(pki::rustls::Error::InvalidCertificate(e)) = &failure.error else {
        panic!("{:?}", failure.error);
    };
    assert!(format!("{e:?}").starts_with("Expired"), "{e:?}");
    let offered = failure.offered.expect("the offered certificate");
    assert_eq!(
        offered.peer,
        Ok(Peer::Operator {
            name: "old".into(),
            role: Role::Approver
        })
    );
    assert!(offered.not_after.unwrap() < now);
    f.still_serves().await;
}

#[tokio::test]
async fn a_plaintext_http2_client() {
    let mut f = start().await;
    let endpoint = Endpoint::from_shared(format!("http://{}", f.addr)).unwrap();
    let err = call(endpoint).await.unwrap_err();
    eprintln!("client: {err}");
    let failure = f.failure().await;
    eprintln!("server: {failure:?}");
    assert!(
        matches!(failure.error, HandshakeError::Tls(_)),
        "{:?}",
        failure.error
    );
    assert!(failure.offered.is_none());
    f.still_serves().await;

    // And the client side refuses to be that client by mistake.
    assert!(pki::endpoint(&format!("http://{}", f.addr), &f.good, None).is_err());
}

#[tokio::test]
async fn garbage_bytes() {
    let mut f = start().await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"\x16\x03\x01\x00\x05hello, not really\r\n\r\n")
        .await
        .unwrap();
    // The server answers (an alert, at most) and closes; it does not wait for more.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    let failure = f.failure().await;
    eprintln!("server: {failure:?}");
    assert!(
        matches!(failure.error, HandshakeError::Tls(_)),
        "{:?}",
        failure.error
    );
    f.still_serves().await;
}

/// A client that connects and says nothing holds up no one, and is dropped at the bound.
#[tokio::test]
async fn a_silent_client_blocks_no_one() {
    let mut f = start().await;
    let started = Instant::now();
    let silent = TcpStream::connect(f.addr).await.unwrap();
    f.still_serves().await;
    assert!(started.elapsed() < HANDSHAKE_TIMEOUT);
    let failure = f.failure().await;
    assert!(
        matches!(failure.error, HandshakeError::Timeout(t) if t == HANDSHAKE_TIMEOUT),
        "{:?}",
        failure.error
    );
    assert_eq!(failure.remote_addr, silent.local_addr().unwrap());
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT);
    f.still_serves().await;
}

/// A collector's certificate is a server's: webpki refuses it as a client's.
#[tokio::test]
async fn a_collector_certificate_as_a_client() {
    let mut f = start().await;
    let server =
        f.ca.issue_collector("c2", &["localhost".into()], &[], hour())
            .unwrap();
    let err = call(f.endpoint(&identity(&f.ca, server)))
        .await
        .unwrap_err();
    eprintln!("client: {err}");
    let failure = f.failure().await;
    eprintln!("server: {failure:?}");
    assert!(
        matches!(
            failure.error,
            HandshakeError::Tls(pki::rustls::Error::InvalidCertificate(_))
        ),
        "{:?}",
        failure.error
    );
    assert_eq!(
        failure.offered.unwrap().peer,
        Ok(Peer::Collector { name: "c2".into() })
    );
    f.still_serves().await;
}

/// A client certificate of the right CA that names no recorder identity (made here with
/// the CA's key, as another tool sharing the CA might) passes TLS and is refused after it.
#[tokio::test]
async fn a_verified_certificate_without_an_identity() {
    let mut f = start().await;
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(f.tmp.path().join("ca/ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(f.ca.cert_pem(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let nobody = ClientIdentity {
        ca_pem: f.ca.cert_pem().to_owned(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    // pki::endpoint refuses such a certificate up front; a plain tonic client does not.
    assert!(pki::endpoint(&f.url(), &nobody, None).is_err());
    let endpoint = Endpoint::from_shared(f.url())
        .unwrap()
        .tls_config(nobody.tls_config(None))
        .unwrap();
    let err = call(endpoint).await.unwrap_err();
    eprintln!("client: {err}");
    let failure = f.failure().await;
    eprintln!("server: {failure:?}");
    assert!(
        matches!(failure.error, HandshakeError::Identity(_)),
        "{:?}",
        failure.error
    );
    let offered = failure.offered.unwrap();
    assert_eq!(offered.subject.as_deref(), Some("CN=someone"));
    assert!(offered.peer.is_err());
    f.still_serves().await;
}

/// The mean time of a full connection (TCP, TLS 1.3 handshake with client certificate,
/// HTTP/2 setup) and one call, for the report: printed, not asserted.
#[tokio::test]
async fn handshake_time() {
    const N: u32 = 50;
    let f = start().await;
    let agent = identity(&f.ca, f.ca.issue_agent("web-1", hour()).unwrap());
    for (what, who) in [("operator (P-256)", &f.good), ("agent (Ed25519)", &agent)] {
        let (mut connect, mut total) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..N {
            let started = Instant::now();
            let channel = f.endpoint(who).connect().await.unwrap();
            connect += started.elapsed();
            QueryClient::new(channel)
                .verify(VerifyRequest::default())
                .await
                .unwrap();
            total += started.elapsed();
        }
        eprintln!(
            "{what}: mean over {N} connections: connect (TCP + TLS + h2) {:?}, with first call {:?}",
            connect / N,
            total / N
        );
    }
}

/// Files written for a client load back as the identity the server sees.
#[tokio::test]
async fn identities_load_from_files() {
    let f = start().await;
    let dir = f.tmp.path();
    let issued = f.ca.issue_operator("carol", Role::Admin, hour()).unwrap();
    pki::write_private(&dir.join("carol.key"), issued.key_pem.as_bytes()).unwrap();
    std::fs::write(dir.join("carol.pem"), &issued.cert_pem).unwrap();
    let loaded = ClientIdentity::load(
        &dir.join("ca/ca.pem"),
        &dir.join("carol.pem"),
        &dir.join("carol.key"),
    )
    .unwrap();
    assert_eq!(
        call(f.endpoint(&loaded)).await.unwrap(),
        Peer::Operator {
            name: "carol".into(),
            role: Role::Admin
        }
    );
}
