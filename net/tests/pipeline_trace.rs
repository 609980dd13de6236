//! `Pipeline::send_traced` over a real socket: a fake coordinator records, per connection,
//! the order in which trace contexts and submits arrive. A traced request's context must come
//! before the request, on every send (a Busy resend included); untraced requests carry none.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use twophase_engine::{ClientId, Epoch, Op, OpKind, Outcome, ParticipantId, RejectReason, Reply, Seq};
use twophase_net::{
    BatchWriter, ClientError, ClientOptions, ErrorCode, Frame, Hello, Inbound, NetLimits, Pipeline, Role, Security,
    TraceKey, Transport, TransportConfig, spawn,
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What the fake coordinator saw, in arrival order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Context { seq: Seq, traceparent: Bytes },
    Submit { seq: Seq },
}

fn start_server(seen: Arc<Mutex<Vec<Seen>>>) -> (Transport, SocketAddr, JoinHandle<()>) {
    let mut config = TransportConfig::new(
        Hello { role: Role::Coordinator, cluster: "local".into(), node: "c1".into(), epoch: Epoch(1) },
        Security::InsecurePlaintext,
    );
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.accept_roles = vec![Role::Client];
    config.directory = vec![(ParticipantId(1), "p1".into())];
    let (tx, rx) = crossbeam_channel::bounded(16);
    let (transport, addr) = spawn(config, tx).expect("spawn");
    let handle = transport.clone();
    let server = std::thread::spawn(move || serve(&handle, &rx, &seen));
    (transport, addr, server)
}

/// Commits every submit, except that a key starting with `busy` is turned away as Busy the
/// first time its seq is seen.
fn serve(transport: &Transport, inbound: &Receiver<Vec<Inbound>>, seen: &Mutex<Vec<Seen>>) {
    let mut busy_once = HashSet::new();
    let mut writer = BatchWriter::<Reply>::new(&NetLimits::default());
    for batch in inbound {
        let mut out = Vec::new();
        for event in batch {
            let Inbound::Frame { conn, frame } = event else { continue };
            match frame {
                Frame::TraceContext(entries) => {
                    for entry in entries {
                        let TraceKey::Submit { seq, .. } = entry.key else { panic!("a client sent {entry:?}") };
                        seen.lock().unwrap().push(Seen::Context { seq, traceparent: entry.traceparent });
                    }
                }
                Frame::Submits(submits) => {
                    for submit in submits {
                        if let Some(nonce) = submit.registration_nonce() {
                            writer.push(&Reply::Registered { nonce, client: ClientId(1000 + conn) }).unwrap();
                            continue;
                        }
                        seen.lock().unwrap().push(Seen::Submit { seq: submit.seq });
                        let busy = submit.ops.first().is_some_and(|op| op.key.starts_with(b"busy"));
                        let reply = if busy && busy_once.insert(submit.seq) {
                            Reply::Rejected { client: submit.client, seq: submit.seq, reason: RejectReason::Busy }
                        } else {
                            let outcome = Outcome::Committed { reads: vec![] };
                            Reply::Outcome { client: submit.client, seq: submit.seq, outcome }
                        };
                        writer.push(&reply).unwrap();
                    }
                    out.push((conn, writer.take()));
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        transport.send_many(out);
    }
}

fn put(key: &'static str) -> Op {
    Op {
        participant: ParticipantId(1),
        key: Bytes::from_static(key.as_bytes()),
        kind: OpKind::Add { delta: 1, floor: 0 },
    }
}

fn options() -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_secs(5), ..ClientOptions::default() }
}

fn finish_all(pipeline: &mut Pipeline, expected: usize) {
    let started = Instant::now();
    let mut done = HashSet::new();
    while done.len() < expected {
        for (seq, outcome) in pipeline.poll(Duration::from_millis(100)).unwrap() {
            assert!(outcome.is_committed());
            assert!(done.insert(seq), "seq {seq} answered twice");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "stalled at {}", done.len());
    }
    assert_eq!(pipeline.outstanding(), 0);
}

#[test]
fn a_traced_request_is_preceded_by_its_context_on_every_send() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (transport, addr, server) = start_server(seen.clone());
    let mut pipeline = Pipeline::connect(addr, options()).unwrap();
    let traceparent = Bytes::from_static(TRACEPARENT.as_bytes());
    // 1 untraced, 2 traced, 3 untraced, 4 traced and turned away once as Busy.
    assert_eq!(pipeline.send(vec![put("a")]).unwrap(), 1);
    assert_eq!(pipeline.send_traced(vec![put("b")], traceparent.clone()).unwrap(), 2);
    assert_eq!(pipeline.send(vec![put("c")]).unwrap(), 3);
    assert_eq!(pipeline.send_traced(vec![put("busy")], traceparent.clone()).unwrap(), 4);
    pipeline.flush().unwrap();
    finish_all(&mut pipeline, 4);
    transport.shutdown();
    server.join().unwrap();

    let seen = seen.lock().unwrap().clone();
    let context = |seq| Seen::Context { seq, traceparent: traceparent.clone() };
    let contexts: Vec<&Seen> = seen.iter().filter(|s| matches!(s, Seen::Context { .. })).collect();
    assert_eq!(contexts, [&context(2), &context(4), &context(4)], "one per send of a traced request: {seen:?}");
    for (at, event) in seen.iter().enumerate() {
        if let Seen::Submit { seq: seq @ (2 | 4) } = event {
            let before = &seen[..at];
            let contexts_before = before.iter().filter(|s| **s == context(*seq)).count();
            let sends_before = before.iter().filter(|s| **s == Seen::Submit { seq: *seq }).count();
            assert_eq!(contexts_before, sends_before + 1, "send of {seq} without its context first: {seen:?}");
        }
    }
    assert_eq!(seen.iter().filter(|s| matches!(s, Seen::Submit { .. })).count(), 5, "{seen:?}");
}

#[test]
fn a_traceparent_too_long_for_the_frame_is_refused_and_nothing_is_sent() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (transport, addr, server) = start_server(seen.clone());
    let mut pipeline = Pipeline::connect(addr, options()).unwrap();
    let too_long = Bytes::from(vec![b'0'; twophase_net::MAX_TRACEPARENT_BYTES + 1]);
    let err = pipeline.send_traced(vec![put("a")], too_long).unwrap_err();
    assert!(matches!(&err, ClientError::Protocol(e) if e.code == ErrorCode::Malformed), "{err}");
    assert_eq!(pipeline.outstanding(), 0);
    assert_eq!(pipeline.send(vec![put("b")]).unwrap(), 1, "the refused request took no seq");
    pipeline.flush().unwrap();
    finish_all(&mut pipeline, 1);
    transport.shutdown();
    server.join().unwrap();
    assert_eq!(*seen.lock().unwrap(), [Seen::Submit { seq: 1 }]);
}

#[test]
fn many_traced_requests_in_one_flush_all_carry_their_context() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (transport, addr, server) = start_server(seen.clone());
    let mut pipeline = Pipeline::connect(addr, options()).unwrap();
    let traceparent = Bytes::from_static(TRACEPARENT.as_bytes());
    for seq in 1..=3000u64 {
        let sent = if seq % 3 == 0 {
            pipeline.send_traced(vec![put("k")], traceparent.clone())
        } else {
            pipeline.send(vec![put("k")])
        };
        assert_eq!(sent.unwrap(), seq);
    }
    pipeline.flush().unwrap();
    finish_all(&mut pipeline, 3000);
    transport.shutdown();
    server.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let mut context_for = HashSet::new();
    for event in &seen {
        match event {
            Seen::Context { seq, .. } => assert!(context_for.insert(*seq), "context of {seq} twice"),
            Seen::Submit { seq } => assert_eq!(context_for.contains(seq), seq % 3 == 0, "seq {seq}"),
        }
    }
    assert_eq!(context_for.len(), 1000);
}
