//! Mutual TLS over real sockets on 127.0.0.1, with CAs and certificates made in memory by
//! rcgen: the certified identity reaches the runtime, strangers are refused with
//! `Unauthenticated`, wrong claims and roles with `Forbidden`, and frames flow both ways
//! (bursts of more than a megabyte included) between the loop and the client library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use twophase_engine::{ClientId, Epoch, Op, OpKind, Outcome, ParticipantId, Reply, ToCoordinator, ToParticipant, TxId};
use twophase_net::{
    BatchWriter, Client, ClientError, ClientOptions, ErrorCode, ErrorFrame, Frame, FrameDecoder, Hello, Inbound,
    NetLimits, PeerId, PeerIdentity, Pipeline, Role, Security, TlsMaterial, Transport, TransportConfig, spawn,
};

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// PEM certificate and key for `twophase://<cluster>/<role>/<name>`, usable by servers
    /// (`localhost`, `127.0.0.1`, `::1`) and clients alike.
    fn issue(&self, cluster: &str, role: Role, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()]).unwrap();
        let uri = format!("twophase://{cluster}/{role}/{name}");
        params.subject_alt_names.push(SanType::URI(Ia5String::try_from(uri).unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Material trusting this CA, with a certificate it signed.
    fn material(&self, cluster: &str, role: Role, name: &str) -> Security {
        let (cert, key) = self.issue(cluster, role, name);
        Security::Tls(Arc::new(TlsMaterial::from_pem(self.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()))
    }
}

fn server_config(role: Role, node: &str, accept_roles: Vec<Role>, security: Security) -> TransportConfig {
    let me = Hello { role, cluster: "local".into(), node: node.into(), epoch: Epoch(1) };
    let mut config = TransportConfig::new(me, security);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.accept_roles = accept_roles;
    config.directory = vec![(ParticipantId(1), "p1".into())];
    config
}

/// A fake coordinator over TLS that commits every submit and reports each accepted identity.
fn start_coordinator(ca: &Ca) -> (Transport, SocketAddr, Receiver<PeerIdentity>) {
    start_coordinator_with(ca, |_| {})
}

/// [`start_coordinator`] with its transport's configuration adjusted by `adjust`.
fn start_coordinator_with(
    ca: &Ca,
    adjust: impl FnOnce(&mut TransportConfig),
) -> (Transport, SocketAddr, Receiver<PeerIdentity>) {
    let security = ca.material("local", Role::Coordinator, "c1");
    let mut config = server_config(Role::Coordinator, "c1", vec![Role::Client, Role::Admin], security);
    adjust(&mut config);
    let (tx, rx) = crossbeam_channel::bounded(16);
    let (transport, addr) = spawn(config, tx).unwrap();
    let (identities_tx, identities) = crossbeam_channel::unbounded();
    let handle = transport.clone();
    std::thread::spawn(move || {
        let mut writer = BatchWriter::<Reply>::new(&NetLimits::default());
        for batch in rx {
            let mut out = Vec::new();
            for event in batch {
                match event {
                    Inbound::Accepted { identity, .. } => {
                        let _ = identities_tx.send(identity);
                    }
                    Inbound::Frame { conn, frame: Frame::Submits(submits) } => {
                        for submit in submits {
                            if let Some(nonce) = submit.registration_nonce() {
                                // Each client registers one session when it connects.
                                writer.push(&Reply::Registered { nonce, client: ClientId(1000 + conn) }).unwrap();
                                continue;
                            }
                            let outcome = Outcome::Committed { reads: vec![] };
                            writer.push(&Reply::Outcome { client: submit.client, seq: submit.seq, outcome }).unwrap();
                        }
                        out.push((conn, writer.take()));
                    }
                    _ => {}
                }
            }
            handle.send_many(out);
        }
    });
    (transport, addr, identities)
}

fn options(security: Security) -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_secs(10), max_attempts: 2, security, ..ClientOptions::default() }
}

fn add(key: &'static str) -> Op {
    Op {
        participant: ParticipantId(1),
        key: Bytes::from_static(key.as_bytes()),
        kind: OpKind::Add { delta: 1, floor: 0 },
    }
}

/// A TLS client outside the library: it may present no certificate and claim anything.
fn raw_tls_exchange(ca: &Ca, client_cert: Option<(String, String)>, addr: SocketAddr, hello: Hello) -> Vec<Frame> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_certs(&ca.pem).remove(0)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(pem_certs(&cert), key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&Frame::Hello(hello).to_bytes()).unwrap();
    tls.flush().unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            // The server closes after its Error frame; what came before is what counts.
            Err(_) => break,
        }
    }
    decode_all(&received)
}

fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).map(Result::unwrap).collect()
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = FrameDecoder::new(NetLimits::default());
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).expect("server frames decode") {
        frames.push(frame);
    }
    frames
}

fn expect_error(frames: &[Frame], code: ErrorCode, text: &str) -> String {
    let Some(Frame::Error(ErrorFrame { code: got, message })) = frames.last() else {
        panic!("expected an Error frame, got {frames:?}")
    };
    assert_eq!(*got, code, "{message}");
    assert!(message.contains(text), "{message:?} does not contain {text:?}");
    message.clone()
}

fn hello(role: Role, cluster: &str, node: &str) -> Hello {
    Hello { role, cluster: cluster.into(), node: node.into(), epoch: Epoch(0) }
}

#[test]
fn an_mtls_client_is_served_and_the_runtime_gets_its_certified_identity() {
    let ca = Ca::new("cluster CA");
    let (transport, addr, identities) = start_coordinator(&ca);
    let mut client = Client::connect(addr, options(ca.material("local", Role::Client, "alice"))).unwrap();
    assert_eq!(client.directory().participant("p1"), Some(ParticipantId(1)));
    assert!(client.submit(vec![add("a")]).unwrap().is_committed());
    let identity = identities.recv_timeout(Duration::from_secs(10)).unwrap();
    let expected =
        PeerIdentity { cluster: "local".into(), role: Role::Client, name: "alice".into(), authenticated: true };
    assert_eq!(identity, expected);
    transport.shutdown();
}

#[test]
fn a_pipeline_over_tls_moves_megabytes_both_ways() {
    let ca = Ca::new("cluster CA");
    let (transport, addr, _) = start_coordinator(&ca);
    let mut pipeline = Pipeline::connect(addr, options(ca.material("local", Role::Client, "loadgen"))).unwrap();
    // 40,000 submits of ~40 bytes: well over a megabyte each way in one flush.
    let total = 40_000u64;
    for _ in 0..total {
        pipeline.send(vec![add("k")]).unwrap();
    }
    pipeline.flush().unwrap();
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        for (_, outcome) in pipeline.poll(Duration::from_millis(100)).unwrap() {
            assert!(outcome.is_committed());
            done += 1;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "pipeline stalled at {done}");
    }
    assert_eq!(pipeline.outstanding(), 0);
    transport.shutdown();
}

fn recv_until(rx: &Receiver<Vec<Inbound>>, mut want: impl FnMut(&Inbound) -> bool) -> Inbound {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let batch = rx.recv_deadline(deadline).expect("expected an inbound event before the deadline");
        if let Some(event) = batch.into_iter().find(|event| want(event)) {
            return event;
        }
    }
}

/// Every message of the data frames arriving on `rx` until `count` have come.
fn collect_messages<T>(rx: &Receiver<Vec<Inbound>>, count: usize, take: impl Fn(Frame) -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = Vec::new();
    while messages.len() < count {
        let batch = rx.recv_deadline(deadline).expect("every message before the deadline");
        for event in batch {
            if let Inbound::Frame { frame, .. } = event {
                messages.extend(take(frame));
            }
        }
    }
    messages
}

#[test]
fn peers_over_tls_exchange_bursts_of_more_than_a_megabyte_both_ways() {
    let ca = Ca::new("cluster CA");
    let participant_security = ca.material("local", Role::Participant, "p1");
    let config = server_config(Role::Participant, "p1", vec![Role::Coordinator, Role::Admin], participant_security);
    let (participant_tx, participant_rx) = crossbeam_channel::bounded(1024);
    let (participant, participant_addr) = spawn(config, participant_tx).unwrap();

    let me = Hello { role: Role::Coordinator, cluster: "local".into(), node: "c1".into(), epoch: Epoch(3) };
    let (coordinator_tx, coordinator_rx) = crossbeam_channel::bounded(1024);
    let coordinator_security = ca.material("local", Role::Coordinator, "c1");
    let (coordinator, _) = spawn(TransportConfig::new(me, coordinator_security), coordinator_tx).unwrap();
    coordinator.add_peer(PeerId(1), participant_addr, "p1".into());
    let Inbound::PeerUp { conn, welcome, .. } =
        recv_until(&coordinator_rx, |event| matches!(event, Inbound::PeerUp { .. }))
    else {
        unreachable!()
    };
    let Inbound::Accepted { conn: back, identity, .. } =
        recv_until(&participant_rx, |event| matches!(event, Inbound::Accepted { .. }))
    else {
        unreachable!()
    };
    assert_eq!((identity.role, identity.name.as_str(), identity.authenticated), (Role::Coordinator, "c1", true));

    // 200,000 commits of 9 bytes: 1.8 MB in one send, split into frames by the writer.
    let count = 200_000;
    let commits: Vec<ToParticipant> =
        (0..count).map(|i| ToParticipant::Commit { txid: TxId::new(Epoch(3), i as u64) }).collect();
    let mut writer = BatchWriter::<ToParticipant>::new(&welcome.limits);
    writer.set_epoch(Epoch(3));
    for commit in &commits {
        writer.push(commit).unwrap();
    }
    let burst = writer.take();
    assert!(burst.len() > 1 << 20, "{} bytes", burst.len());
    coordinator.send(conn, burst);
    let received = collect_messages(&participant_rx, count, |frame| match frame {
        Frame::ToParticipant { epoch, messages } => {
            assert_eq!(epoch, Epoch(3));
            messages
        }
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(received, commits);

    let acks: Vec<ToCoordinator> = commits
        .iter()
        .map(|commit| match commit {
            ToParticipant::Commit { txid } => ToCoordinator::Ack { txid: *txid },
            _ => unreachable!(),
        })
        .collect();
    let mut writer = BatchWriter::<ToCoordinator>::new(&NetLimits::default());
    for ack in &acks {
        writer.push(ack).unwrap();
    }
    participant.send(back, writer.take());
    let received = collect_messages(&coordinator_rx, count, |frame| match frame {
        Frame::ToCoordinator(messages) => messages,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(received, acks);
    participant.shutdown();
    coordinator.shutdown();
}

#[test]
fn strangers_are_refused_as_unauthenticated_without_learning_the_cluster() {
    let ca = Ca::new("cluster CA");
    let (transport, addr, identities) = start_coordinator(&ca);

    // No client certificate at all.
    let frames = raw_tls_exchange(&ca, None, addr, hello(Role::Client, "local", "alice"));
    expect_error(&frames, ErrorCode::Unauthenticated, "no client certificate");

    // A certificate from another CA (the client still trusts the server's CA).
    let other = Ca::new("someone else's CA");
    let (cert, key) = other.issue("local", Role::Client, "mallory");
    let material = TlsMaterial::from_pem(ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    let err = Client::connect(addr, options(Security::Tls(Arc::new(material)))).err().unwrap();
    let ClientError::Refused { code: ErrorCode::Unauthenticated, message } = &err else { panic!("{err}") };
    assert!(message.contains("client certificate refused"), "{message}");

    // A certificate of this CA for another cluster: refused, and the server's cluster is not named.
    let err = Client::connect(addr, options(ca.material("prod", Role::Client, "bob"))).err().unwrap();
    let ClientError::Refused { code: ErrorCode::Unauthenticated, message } = &err else { panic!("{err}") };
    assert!(message.contains("cluster 'prod' is not accepted here"), "{message}");
    assert!(!message.contains("local"), "{message}");

    // A plaintext client is told, in plaintext, that TLS is required.
    let err = Client::connect(addr, options(Security::InsecurePlaintext)).err().unwrap();
    let ClientError::Refused { code: ErrorCode::Unauthenticated, message } = &err else { panic!("{err}") };
    assert!(message.contains("requires TLS"), "{message}");

    // None of them reached the runtime; a proper client still does.
    assert!(identities.try_recv().is_err());
    let mut client = Client::connect(addr, options(ca.material("local", Role::Client, "alice"))).unwrap();
    assert!(client.submit(vec![add("a")]).unwrap().is_committed());
    transport.shutdown();
}

#[test]
fn a_tls_client_over_the_connection_limit_is_told_so_once_its_handshake_completed() {
    let ca = Ca::new("cluster CA");
    let (transport, addr, _identities) = start_coordinator_with(&ca, |config| config.max_connections = 1);
    let mut first = Client::connect(addr, options(ca.material("local", Role::Client, "alice"))).unwrap();

    // Before, a TLS connection over the limit was closed mid-handshake: the client saw
    // only a broken connection. Now it reads why, encrypted.
    let bob = ca.issue("local", Role::Client, "bob");
    let frames = raw_tls_exchange(&ca, Some(bob), addr, hello(Role::Client, "local", "bob"));
    expect_error(&frames, ErrorCode::Overloaded, "limit of 1 connections");
    let err = Client::connect(addr, options(ca.material("local", Role::Client, "carol"))).err().unwrap();
    let ClientError::Refused { code: ErrorCode::Overloaded, .. } = &err else { panic!("{err}") };

    // The connection within the limit is served throughout.
    assert!(first.submit(vec![add("a")]).unwrap().is_committed());
    transport.shutdown();
}

/// Forwards connections to `server`, passing what the server sends on one byte every 20 ms.
fn trickling_proxy(server: SocketAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let upstream = TcpStream::connect(server).unwrap();
            let (mut client_in, mut upstream_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut client_in, &mut upstream_out));
            std::thread::spawn(move || {
                let (mut upstream, mut client) = (upstream, client);
                let mut byte = [0u8; 1];
                while upstream.read_exact(&mut byte).is_ok() && client.write_all(&byte).is_ok() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    });
    addr
}

#[test]
fn a_server_that_trickles_its_tls_handshake_times_the_client_out() {
    let ca = Ca::new("cluster CA");
    let (transport, addr, _identities) = start_coordinator(&ca);
    let slow = trickling_proxy(addr);
    let options = ClientOptions {
        request_timeout: Duration::from_secs(1),
        max_attempts: 1,
        ..options(ca.material("local", Role::Client, "alice"))
    };
    // The server's first flight (its certificate chain) is a few kilobytes: a minute at
    // this pace, each byte well within a per-read timeout. One deadline covers it all.
    let started = Instant::now();
    let err = Client::connect(slow, options).err().unwrap();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(20), "the handshake took {:?}", started.elapsed());
    transport.shutdown();
}

#[test]
fn claims_beyond_the_certificate_and_roles_the_server_does_not_take_are_forbidden() {
    let ca = Ca::new("cluster CA");
    let (transport, addr, identities) = start_coordinator(&ca);

    // A client's certificate whose Hello claims to be the coordinator.
    let frames = raw_tls_exchange(
        &ca,
        Some(ca.issue("local", Role::Client, "alice")),
        addr,
        hello(Role::Coordinator, "local", "alice"),
    );
    expect_error(&frames, ErrorCode::Forbidden, "the Hello claims coordinator 'alice'");
    // Or another name.
    let frames = raw_tls_exchange(
        &ca,
        Some(ca.issue("local", Role::Client, "alice")),
        addr,
        hello(Role::Client, "local", "bob"),
    );
    expect_error(&frames, ErrorCode::Forbidden, "certificate names client 'alice'");
    // The admin client with a client's certificate.
    let err = twophase_net::admin::topology(addr, "local", &ca.material("local", Role::Client, "alice")).unwrap_err();
    let ClientError::Refused { code: ErrorCode::Forbidden, .. } = &err else { panic!("{err}") };
    assert!(identities.try_recv().is_err());
    transport.shutdown();

    // A participant-like server takes coordinators and admins, not clients.
    let security = ca.material("local", Role::Participant, "p1");
    let config = server_config(Role::Participant, "p1", vec![Role::Coordinator, Role::Admin], security);
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let (participant, addr) = spawn(config, tx).unwrap();
    let err = Client::connect(addr, options(ca.material("local", Role::Client, "alice"))).err().unwrap();
    let ClientError::Refused { code: ErrorCode::Forbidden, message } = &err else { panic!("{err}") };
    assert_eq!(message, "role client not accepted by a participant");
    participant.shutdown();
}

#[test]
fn a_server_whose_certificate_names_someone_else_does_not_start() {
    let ca = Ca::new("cluster CA");
    let config =
        server_config(Role::Participant, "p1", vec![Role::Coordinator], ca.material("local", Role::Participant, "p2"));
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let err = spawn(config, tx).err().unwrap();
    assert!(
        err.to_string()
            .contains("this node is participant 'p1' of cluster 'local' but its certificate names participant 'p2'"),
        "{err}"
    );
}

#[test]
fn material_without_an_identity_or_with_a_foreign_key_is_refused_at_load() {
    let ca = Ca::new("cluster CA");
    let (cert, _) = ca.issue("local", Role::Client, "alice");
    let (_, other_key) = ca.issue("local", Role::Client, "bob");
    let err = TlsMaterial::from_pem(ca.pem.as_bytes(), cert.as_bytes(), other_key.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("do not go together"), "{err}");
    let err = TlsMaterial::from_pem(ca.pem.as_bytes(), b"not pem", b"").unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
    // Two identities in one certificate are one too many.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    for uri in ["twophase://local/client/alice", "twophase://local/admin/alice"] {
        params.subject_alt_names.push(SanType::URI(Ia5String::try_from(uri).unwrap()));
    }
    let two = params.signed_by(&key, &ca.issuer).unwrap().pem();
    let err = TlsMaterial::from_pem(ca.pem.as_bytes(), two.as_bytes(), key.serialize_pem().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("2 twophase:// identities; exactly one is allowed"), "{err}");
    // The CA's own certificate carries no twophase identity.
    let (_, key) = ca.issue("local", Role::Client, "alice");
    let err = TlsMaterial::from_pem(ca.pem.as_bytes(), ca.pem.as_bytes(), key.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("own certificate"), "{err}");
}

#[test]
fn a_tls_client_of_a_plaintext_server_gets_a_clear_error() {
    let ca = Ca::new("cluster CA");
    let config = server_config(Role::Coordinator, "c1", vec![Role::Client], Security::InsecurePlaintext);
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let (transport, addr) = spawn(config, tx).unwrap();
    let err = Client::connect(addr, options(ca.material("local", Role::Client, "alice"))).err().unwrap();
    let ClientError::Tls(message) = &err else { panic!("{err}") };
    assert!(message.contains("is the server running with --insecure-plaintext?"), "{message}");
    transport.shutdown();
}

#[test]
fn a_tls_peer_link_to_a_plaintext_participant_never_comes_up() {
    let ca = Ca::new("cluster CA");
    let config = server_config(Role::Participant, "p1", vec![Role::Coordinator], Security::InsecurePlaintext);
    let (participant_tx, participant_rx) = crossbeam_channel::bounded(16);
    let (participant, addr) = spawn(config, participant_tx).unwrap();
    let me = Hello { role: Role::Coordinator, cluster: "local".into(), node: "c1".into(), epoch: Epoch(1) };
    let (coordinator_tx, coordinator_rx) = crossbeam_channel::bounded(16);
    let security = ca.material("local", Role::Coordinator, "c1");
    let (coordinator, _) = spawn(TransportConfig::new(me, security), coordinator_tx).unwrap();
    coordinator.add_peer(PeerId(1), addr, "p1".into());
    // Several reconnect attempts (50 ms doubling) happen meanwhile; none may come up.
    std::thread::sleep(Duration::from_millis(500));
    assert!(coordinator_rx.try_iter().flatten().all(|event| !matches!(event, Inbound::PeerUp { .. })));
    assert!(participant_rx.try_iter().flatten().all(|event| !matches!(event, Inbound::Accepted { .. })));
    coordinator.shutdown();
    participant.shutdown();
}
