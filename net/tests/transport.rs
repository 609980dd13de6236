//! The transport and client library over real sockets on 127.0.0.1: a tiny "coordinator"
//! thread consumes `Inbound` batches and answers `Replies`; clients submit; broken
//! connections get an `Error` frame and a close while valid clients keep being served.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use twophase_engine::{
    ClientId, Epoch, Op, OpKind, Outcome, ParticipantId, RejectReason, Reply, ToCoordinator, ToParticipant, TxId,
};
use twophase_net::{
    BatchWriter, Client, ClientError, ClientOptions, ErrorCode, ErrorFrame, Frame, FrameDecoder, Hello, Inbound,
    NetLimits, PeerId, Pipeline, Role, Security, Transport, TransportConfig, spawn,
};

fn coordinator_config() -> TransportConfig {
    let mut config = TransportConfig::new(
        Hello { role: Role::Coordinator, cluster: "local".into(), node: "c1".into(), epoch: Epoch(1) },
        Security::InsecurePlaintext,
    );
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.accept_roles = vec![Role::Client];
    config.directory = vec![(ParticipantId(1), "p1".into()), (ParticipantId(2), "p2".into())];
    config.max_connections = 32;
    config
}

/// A fake coordinator: commits every submit, except that a key starting with `busy` is
/// turned away as Busy the first time its `(client, seq)` is seen.
fn start_server() -> (Transport, SocketAddr, JoinHandle<usize>) {
    start_server_with(coordinator_config())
}

fn start_server_with(config: TransportConfig) -> (Transport, SocketAddr, JoinHandle<usize>) {
    let (tx, rx) = crossbeam_channel::bounded(16);
    let (transport, addr) = spawn(config, tx).expect("spawn");
    let handle = transport.clone();
    let server = std::thread::spawn(move || serve(handle, rx));
    (transport, addr, server)
}

fn serve(transport: Transport, inbound: Receiver<Vec<Inbound>>) -> usize {
    let mut seen = HashSet::new();
    let mut writer = BatchWriter::<Reply>::new(&NetLimits::default());
    let mut served = 0;
    for batch in inbound {
        let mut out = Vec::new();
        for event in batch {
            let Inbound::Frame { conn, frame: Frame::Submits(submits) } = event else { continue };
            for submit in submits {
                if let Some(nonce) = submit.registration_nonce() {
                    // Each client registers one session when it connects.
                    writer.push(&Reply::Registered { nonce, client: ClientId(1000 + conn) }).unwrap();
                    continue;
                }
                let busy = submit.ops.first().is_some_and(|op| op.key.starts_with(b"busy"));
                let reply = if busy && seen.insert((submit.client, submit.seq)) {
                    Reply::Rejected { client: submit.client, seq: submit.seq, reason: RejectReason::Busy }
                } else {
                    served += 1;
                    Reply::Outcome {
                        client: submit.client,
                        seq: submit.seq,
                        outcome: Outcome::Committed { reads: vec![] },
                    }
                };
                writer.push(&reply).unwrap();
            }
            out.push((conn, writer.take()));
        }
        transport.send_many(out);
    }
    served
}

fn add(participant: u16, key: &'static str, delta: i64) -> Op {
    Op {
        participant: ParticipantId(participant),
        key: Bytes::from_static(key.as_bytes()),
        kind: OpKind::Add { delta, floor: 0 },
    }
}

fn options() -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_secs(5), ..ClientOptions::default() }
}

/// Sends `bytes` on a raw connection, then reads until the server closes; returns the frames
/// it sent (the Welcome, if any, and the Error).
fn raw_exchange(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Vec<Frame> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(bytes).unwrap();
    if close_write {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) => panic!("expected the server to close, got {err}"),
        }
    }
    let mut buf = BytesMut::from(&received[..]);
    let mut decoder = FrameDecoder::new(NetLimits::default());
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).expect("server frames decode") {
        frames.push(frame);
    }
    frames
}

fn expect_error(frames: &[Frame], code: ErrorCode, text: &str) {
    let Some(Frame::Error(ErrorFrame { code: got, message })) = frames.last() else {
        panic!("expected an Error frame, got {frames:?}")
    };
    assert_eq!(*got, code, "{message}");
    assert!(message.contains(text), "{message:?} does not contain {text:?}");
}

fn hello(role: Role, cluster: &str) -> Vec<u8> {
    Frame::Hello(Hello { role, cluster: cluster.into(), node: "x".into(), epoch: Epoch(0) }).to_bytes().to_vec()
}

/// The server reads a short burst in one call and waits for the next edge; an end of
/// stream that comes later, alone or right behind data, must still close the connection.
#[test]
fn an_end_of_stream_after_a_short_read_closes_the_connection() {
    let (transport, addr, server) = start_server();
    for pause in [Duration::ZERO, Duration::from_millis(50)] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(&hello(Role::Client, "local")).unwrap();
        std::thread::sleep(pause);
        stream.shutdown(Shutdown::Write).unwrap();
        let mut received = Vec::new();
        let closed = stream.read_to_end(&mut received);
        assert!(closed.is_ok(), "the server did not close after {pause:?}: {closed:?}");
        if !pause.is_zero() {
            // The hello was answered before the end of stream came.
            let mut buf = BytesMut::from(&received[..]);
            let frame = FrameDecoder::new(NetLimits::default()).decode(&mut buf).unwrap();
            assert!(matches!(frame, Some(Frame::Welcome(_))), "{frame:?}");
        }
    }
    transport.shutdown();
    assert_eq!(server.join().unwrap(), 0);
}

#[test]
fn clients_are_served_and_bad_connections_get_an_error_and_a_close() {
    let (transport, addr, server) = start_server();

    let mut client = Client::connect(addr, options()).expect("connect");
    assert_eq!(
        client.directory().participants(),
        &[(ParticipantId(1), "p1".to_string()), (ParticipantId(2), "p2".to_string())]
    );
    assert_eq!(client.directory().participant("p2"), Some(ParticipantId(2)));
    let err = client.directory().require_participant("p9").unwrap_err();
    assert_eq!(err.to_string(), "unknown participant 'p9'; the coordinator knows: p1, p2");
    assert!(client.submit(vec![add(1, "a", 5), add(2, "b", -5)]).unwrap().is_committed());
    // Busy once, then committed under the same (client, seq).
    assert!(client.submit(vec![add(1, "busy", 1)]).unwrap().is_committed());

    // Garbage: "GET " read as a length is far above the pre-handshake limit.
    let frames = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    expect_error(&frames, ErrorCode::FrameTooLarge, "exceeds the limit");
    // A huge length.
    let frames = raw_exchange(addr, &[0xff, 0xff, 0xff, 0x7f, 1, 1], false);
    expect_error(&frames, ErrorCode::FrameTooLarge, "2147483647 bytes");
    // Wrong version.
    let mut bad_version = hello(Role::Client, "local");
    bad_version[4] = 9;
    let frames = raw_exchange(addr, &bad_version, false);
    expect_error(&frames, ErrorCode::UnsupportedVersion, "unsupported protocol version 9; this server speaks 1");
    // A frame whose payload is cut short inside a field.
    let mut truncated = hello(Role::Client, "local");
    truncated.truncate(12);
    truncated[..4].copy_from_slice(&8u32.to_le_bytes());
    let frames = raw_exchange(addr, &truncated, false);
    expect_error(&frames, ErrorCode::Malformed, "truncated");
    // A connection closed in the middle of a frame.
    let frames = raw_exchange(addr, &hello(Role::Client, "local")[..10], true);
    expect_error(&frames, ErrorCode::Malformed, "middle of a frame");
    // Handshake refusals.
    let frames = raw_exchange(addr, &hello(Role::Client, "x"), false);
    expect_error(&frames, ErrorCode::HandshakeRefused, "cluster 'x' does not match 'local'");
    let frames = raw_exchange(addr, &hello(Role::Participant, "local"), false);
    expect_error(&frames, ErrorCode::HandshakeRefused, "role participant not accepted by a coordinator");
    let frames = raw_exchange(addr, &Frame::Submits(vec![]).to_bytes(), false);
    expect_error(&frames, ErrorCode::UnexpectedFrame, "expected Hello");
    // After a good handshake: a batch count above the limit.
    let mut bad_batch = hello(Role::Client, "local");
    bad_batch.extend_from_slice(&[6, 0, 0, 0, 1, 16]);
    bad_batch.extend_from_slice(&u32::MAX.to_le_bytes());
    let frames = raw_exchange(addr, &bad_batch, false);
    assert!(matches!(frames[0], Frame::Welcome(_)), "{frames:?}");
    expect_error(&frames, ErrorCode::BatchTooLarge, "exceeds the limit of 65536");
    // A frame the client's role may not send (votes and acks are a participant's).
    let mut wrong_kind = hello(Role::Client, "local");
    wrong_kind.extend_from_slice(&Frame::ToCoordinator(vec![ToCoordinator::Ack { txid: TxId(1) }]).to_bytes());
    let frames = raw_exchange(addr, &wrong_kind, false);
    assert!(matches!(frames[0], Frame::Welcome(_)), "{frames:?}");
    expect_error(&frames, ErrorCode::UnexpectedFrame, "a client may not send ToCoordinator frames");

    // The client library reports a refusal with the server's words.
    let err = Client::connect(addr, ClientOptions { cluster: "prod".into(), ..options() }).err().unwrap();
    assert!(matches!(err, ClientError::Refused { code: ErrorCode::HandshakeRefused, .. }), "{err}");
    assert!(err.to_string().contains("cluster 'prod' does not match 'local'"), "{err}");

    // The first client is still served, and so is a new one.
    assert!(client.submit(vec![add(1, "a", 1)]).unwrap().is_committed());
    let mut second = Client::connect(addr, options()).unwrap();
    assert!(second.submit(vec![add(2, "c", 1)]).unwrap().is_committed());

    transport.shutdown();
    assert_eq!(server.join().unwrap(), 4);
}

#[test]
fn pipelines_batch_many_transactions_and_resend_busy_ones() {
    let (transport, addr, server) = start_server();
    let mut pipeline = Pipeline::connect(addr, options()).unwrap();
    let total = 20_000u64;
    let started = Instant::now();
    let mut done = HashSet::new();
    let mut sent = 0u64;
    while done.len() < total as usize {
        while sent < total && pipeline.outstanding() < 4096 {
            let key = if sent.is_multiple_of(100) { "busy" } else { "k" };
            pipeline.send(vec![add(1, key, 1)]).unwrap();
            sent += 1;
        }
        pipeline.flush().unwrap();
        for (seq, outcome) in pipeline.poll(Duration::from_millis(100)).unwrap() {
            assert!(outcome.is_committed());
            assert!(done.insert(seq), "seq {seq} answered twice");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "pipeline stalled at {}", done.len());
    }
    assert_eq!(pipeline.outstanding(), 0);
    assert_eq!(done, (1..=total).collect());
    transport.shutdown();
    assert_eq!(server.join().unwrap(), total as usize);
}

#[test]
fn client_reconnects_and_gives_up_with_a_clear_error() {
    let (transport, addr, server) = start_server();
    let mut client = Client::connect(addr, ClientOptions { max_attempts: 3, ..options() }).unwrap();
    assert!(client.submit(vec![add(1, "a", 1)]).unwrap().is_committed());
    transport.shutdown();
    server.join().unwrap();
    let err = client.submit(vec![add(1, "a", 1)]).unwrap_err();
    assert!(matches!(err, ClientError::GaveUp { attempts: 3, .. }), "{err}");
    assert!(err.to_string().starts_with("gave up after 3 attempts; last error:"), "{err}");
}

fn recv_until(rx: &Receiver<Vec<Inbound>>, mut want: impl FnMut(&Inbound) -> bool) -> Inbound {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let batch = rx.recv_deadline(deadline).expect("expected inbound event before the deadline");
        if let Some(event) = batch.into_iter().find(|event| want(event)) {
            return event;
        }
    }
}

#[test]
fn peers_connect_exchange_batches_and_report_down() {
    // A participant that accepts coordinators.
    let mut participant_config = TransportConfig::new(
        Hello { role: Role::Participant, cluster: "local".into(), node: "p1".into(), epoch: Epoch(0) },
        Security::InsecurePlaintext,
    );
    participant_config.listen = Some("127.0.0.1:0".parse().unwrap());
    participant_config.accept_roles = vec![Role::Coordinator];
    let (participant_tx, participant_rx) = crossbeam_channel::bounded(16);
    let (participant, participant_addr) = spawn(participant_config, participant_tx).unwrap();

    // A coordinator that only connects out.
    let coordinator_config = TransportConfig::new(
        Hello { role: Role::Coordinator, cluster: "local".into(), node: "c1".into(), epoch: Epoch(4) },
        Security::InsecurePlaintext,
    );
    let (coordinator_tx, coordinator_rx) = crossbeam_channel::bounded(16);
    let (coordinator, _) = spawn(coordinator_config, coordinator_tx).unwrap();
    coordinator.add_peer(PeerId(1), participant_addr, "p1".into());
    let Inbound::PeerUp { peer, conn, welcome } =
        recv_until(&coordinator_rx, |event| matches!(event, Inbound::PeerUp { .. }))
    else {
        unreachable!()
    };
    assert_eq!((peer, welcome.node.as_str(), welcome.role), (PeerId(1), "p1", Role::Participant));

    let Inbound::Accepted { conn: coordinator_conn, hello, identity } =
        recv_until(&participant_rx, |event| matches!(event, Inbound::Accepted { .. }))
    else {
        unreachable!()
    };
    assert_eq!((hello.role, hello.epoch), (Role::Coordinator, Epoch(4)));
    assert_eq!((identity.role, identity.name.as_str(), identity.authenticated), (Role::Coordinator, "c1", false));

    let txid = TxId::new(Epoch(4), 1);
    let mut writer = BatchWriter::<ToParticipant>::new(&welcome.limits);
    writer.set_epoch(Epoch(4));
    writer.push(&ToParticipant::Commit { txid }).unwrap();
    writer.push(&ToParticipant::Abort { txid }).unwrap();
    coordinator.send(conn, writer.take());
    let Inbound::Frame { frame, .. } = recv_until(&participant_rx, |event| matches!(event, Inbound::Frame { .. }))
    else {
        unreachable!()
    };
    assert_eq!(
        frame,
        Frame::ToParticipant {
            epoch: Epoch(4),
            messages: vec![ToParticipant::Commit { txid }, ToParticipant::Abort { txid }]
        }
    );
    participant.send(coordinator_conn, Frame::ToCoordinator(vec![ToCoordinator::Ack { txid }]).to_bytes());
    let Inbound::Frame { frame, .. } = recv_until(&coordinator_rx, |event| matches!(event, Inbound::Frame { .. }))
    else {
        unreachable!()
    };
    assert_eq!(frame, Frame::ToCoordinator(vec![ToCoordinator::Ack { txid }]));

    // A peer under the wrong name is refused by the coordinator's check and never comes up.
    coordinator.add_peer(PeerId(9), participant_addr, "p2".into());
    std::thread::sleep(Duration::from_millis(300));
    // The participant goes away: the coordinator reports peer 1 down.
    participant.shutdown();
    let deadline = Instant::now() + Duration::from_secs(10);
    'wait: loop {
        for event in coordinator_rx.recv_deadline(deadline).expect("PeerDown before the deadline") {
            match event {
                Inbound::PeerDown { peer } => {
                    assert_eq!(peer, PeerId(1));
                    break 'wait;
                }
                Inbound::PeerUp { peer, .. } => panic!("{peer:?} came up under the wrong node name"),
                _ => {}
            }
        }
    }
    coordinator.shutdown();
}

#[test]
fn flush_waits_until_queued_frames_are_in_the_kernel() {
    let (tx, rx) = crossbeam_channel::bounded(16);
    let (transport, addr) = spawn(coordinator_config(), tx).expect("spawn");
    let mut reader = TcpStream::connect(addr).unwrap();
    reader.write_all(&hello(Role::Client, "local")).unwrap();
    let Inbound::Accepted { conn, .. } = recv_until(&rx, |event| matches!(event, Inbound::Accepted { .. })) else {
        unreachable!()
    };
    assert!(transport.flush(Duration::from_secs(10)), "a Welcome fits any socket buffer");
    // Far more than loopback socket buffers hold, while nobody reads: cannot be flushed.
    let bulk = 32 << 20;
    transport.send(conn, Bytes::from(vec![7u8; bulk]));
    assert!(!transport.flush(Duration::from_millis(200)), "32 MiB cannot be in the kernel of an unread socket");
    let drain = std::thread::spawn(move || {
        let mut sink = vec![0; 1 << 16];
        let mut total = 0;
        while total < bulk {
            match reader.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    assert!(transport.flush(Duration::from_secs(30)), "once the peer reads, everything is written");
    assert!(drain.join().unwrap() >= bulk, "the reader got every byte (after the Welcome)");
    transport.shutdown();
}

#[test]
fn a_client_over_the_connection_limit_is_told_so_and_the_others_are_served() {
    let mut config = coordinator_config();
    config.max_connections = 2;
    let (transport, addr, server) = start_server_with(config);
    let mut first = Client::connect(addr, options()).unwrap();
    let mut second = Client::connect(addr, options()).unwrap();

    let frames = raw_exchange(addr, &hello(Role::Client, "local"), true);
    expect_error(&frames, ErrorCode::Overloaded, "limit of 2 connections");
    let err = Client::connect(addr, ClientOptions { max_attempts: 1, ..options() }).err().unwrap();
    let ClientError::Refused { code: ErrorCode::Overloaded, .. } = &err else { panic!("{err}") };

    assert!(first.submit(vec![add(1, "a", 1)]).unwrap().is_committed());
    assert!(second.submit(vec![add(2, "b", 1)]).unwrap().is_committed());
    drop((first, second));
    transport.shutdown();
    assert_eq!(server.join().unwrap(), 2);
}
