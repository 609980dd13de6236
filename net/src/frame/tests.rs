//! Frame samples shared by the crate's tests, and the codec's tests.

use bytes::{BufMut, Bytes, BytesMut};
use twophase_engine::codec::Encode;
use twophase_engine::message::{Interactive, SagaStep, SagaSubmit};
use twophase_engine::ops::Isolation;
use twophase_engine::{
    AbortReason, ClientId, Epoch, LocalOp, Op, OpKind, Outcome, ParticipantId, Read, RejectReason, Reply, Submit,
    ToCoordinator, ToParticipant, TxId, Vote,
};

use super::*;

pub fn key(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub fn sample_frames() -> Vec<Frame> {
    let txid = TxId::new(Epoch(2), 41);
    vec![
        Frame::Hello(Hello { role: Role::Coordinator, cluster: "local".into(), node: "c1".into(), epoch: Epoch(2) }),
        Frame::Welcome(Welcome {
            role: Role::Coordinator,
            cluster: "local".into(),
            node: "c1".into(),
            directory: vec![(ParticipantId(1), "p1".into()), (ParticipantId(2), "p2".into())],
            limits: NetLimits::default(),
        }),
        Frame::Error(ErrorFrame { code: ErrorCode::BatchTooLarge, message: "too many".into() }),
        Frame::Error(ErrorFrame { code: ErrorCode::Other(99), message: String::new() }),
        Frame::Submits(vec![
            Submit {
                client: ClientId(7),
                seq: 1,
                ops: vec![
                    Op { participant: ParticipantId(1), key: key("a"), kind: OpKind::Add { delta: -5, floor: 0 } },
                    Op { participant: ParticipantId(2), key: key("b"), kind: OpKind::Put(key("v")) },
                ],
            },
            Submit { client: ClientId(7), seq: 2, ops: vec![] },
        ]),
        Frame::Submits(vec![]),
        Frame::Replies(vec![
            Reply::Outcome {
                client: ClientId(7),
                seq: 1,
                outcome: Outcome::Committed { reads: vec![Read { index: 0, value: Some(key("x")) }] },
            },
            Reply::Outcome {
                client: ClientId(7),
                seq: 2,
                outcome: Outcome::Aborted {
                    reason: AbortReason::Conflict { participant: ParticipantId(1), key: key("a") },
                },
            },
            Reply::Rejected { client: ClientId(7), seq: 3, reason: RejectReason::Busy },
        ]),
        Frame::ToParticipant {
            epoch: Epoch(2),
            messages: vec![
                ToParticipant::Prepare {
                    txid,
                    ops: vec![LocalOp { index: 0, key: key("a"), kind: OpKind::Delete }],
                    sole: false,
                },
                ToParticipant::Commit { txid },
                ToParticipant::Abort { txid },
            ],
        },
        Frame::ToCoordinator(vec![
            ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } },
            ToCoordinator::Vote {
                txid,
                vote: Vote::No { reason: AbortReason::Stale { participant: ParticipantId(3) } },
            },
            ToCoordinator::Ack { txid },
            ToCoordinator::Inquiry { txid },
        ]),
        Frame::TraceContext(vec![
            TraceEntry { key: TraceKey::Submit { client: ClientId(7), seq: 1 }, traceparent: key("00-ab-cd-01") },
            TraceEntry { key: TraceKey::Tx(txid), traceparent: Bytes::new() },
        ]),
        Frame::Interactive(sample_interactive(txid)),
        Frame::Sagas(vec![
            SagaSubmit {
                client: ClientId(7),
                seq: 10,
                steps: vec![
                    SagaStep {
                        action: vec![Op {
                            participant: ParticipantId(1),
                            key: key("a"),
                            kind: OpKind::Add { delta: -5, floor: 0 },
                        }],
                        compensation: vec![Op {
                            participant: ParticipantId(1),
                            key: key("a"),
                            kind: OpKind::Add { delta: 5, floor: i64::MIN },
                        }],
                    },
                    SagaStep {
                        action: vec![Op { participant: ParticipantId(2), key: key("b"), kind: OpKind::Delete }],
                        compensation: vec![],
                    },
                ],
            },
            SagaSubmit { client: ClientId(7), seq: 11, steps: vec![] },
        ]),
        Frame::Raft(Bytes::from_static(b"an encoded raft message")),
        Frame::Raft(Bytes::new()),
        Frame::NotLeader(NotLeader {
            term: 7,
            leader: Some(LeaderHint { name: "c2".into(), addr: "127.0.0.1:7002".parse().unwrap() }),
        }),
        Frame::NotLeader(NotLeader {
            term: 9,
            leader: Some(LeaderHint { name: "c3".into(), addr: "[::1]:7003".parse().unwrap() }),
        }),
        Frame::NotLeader(NotLeader { term: 0, leader: None }),
        Frame::Replies(vec![
            Reply::Began { client: ClientId(7), seq: 4, txid },
            Reply::Executed { client: ClientId(7), seq: 5, reads: vec![Read { index: 1, value: None }] },
            Reply::Executed { client: ClientId(7), seq: 6, reads: vec![] },
            Reply::Outcome {
                client: ClientId(7),
                seq: 7,
                outcome: Outcome::Aborted { reason: AbortReason::Deadlock { cycle: vec![txid, TxId(3)] } },
            },
            Reply::Outcome {
                client: ClientId(7),
                seq: 8,
                outcome: Outcome::Aborted {
                    reason: AbortReason::LockTimeout { participant: ParticipantId(2), key: key("k") },
                },
            },
            Reply::Outcome {
                client: ClientId(7),
                seq: 9,
                outcome: Outcome::Aborted { reason: AbortReason::NotActive },
            },
        ]),
    ]
}

/// One of each interactive request.
pub fn sample_interactive(txid: TxId) -> Vec<Interactive> {
    let client = ClientId(7);
    vec![
        Interactive::Begin { client, seq: 4, isolation: Isolation::ReadCommitted, idle_timeout_ms: 2500 },
        Interactive::Execute {
            client,
            seq: 5,
            txid,
            ops: vec![
                Op { participant: ParticipantId(1), key: key("a"), kind: OpKind::Add { delta: 1, floor: 0 } },
                Op { participant: ParticipantId(2), key: key("b"), kind: OpKind::Get },
            ],
        },
        Interactive::Commit { client, seq: 6, txid },
        Interactive::Rollback { client, seq: 7, txid },
    ]
}

fn decode_one(bytes: &[u8], limits: NetLimits) -> Result<Option<Frame>, ProtocolError> {
    FrameDecoder::new(limits).decode(&mut BytesMut::from(bytes))
}

#[test]
fn every_frame_kind_round_trips_and_prefixes_wait() {
    for frame in sample_frames() {
        let bytes = frame.to_bytes();
        assert_eq!(bytes.len(), 4 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize);
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = FrameDecoder::new(NetLimits::default()).decode(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert!(buf.is_empty());
        for cut in 0..bytes.len() {
            assert_eq!(decode_one(&bytes[..cut], NetLimits::default()), Ok(None), "{frame:?} prefix {cut}");
        }
    }
}

#[test]
fn decoder_fed_byte_by_byte_yields_every_frame() {
    let frames = sample_frames();
    let stream: Vec<u8> = frames.iter().flat_map(|frame| frame.to_bytes().to_vec()).collect();
    let mut decoder = FrameDecoder::new(NetLimits::default());
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in stream {
        buf.extend_from_slice(&[byte]);
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
}

#[test]
fn decoded_keys_are_slices_of_the_frame() {
    let frame = &sample_frames()[4];
    let bytes = frame.to_bytes();
    let mut buf = BytesMut::from(&bytes[..]);
    let base = buf.as_ptr() as usize;
    let Some(Frame::Submits(submits)) = FrameDecoder::new(NetLimits::default()).decode(&mut buf).unwrap() else {
        panic!("not submits")
    };
    let key_at = submits[0].ops[0].key.as_ptr() as usize;
    assert!(key_at > base && key_at < base + bytes.len(), "key was copied");
}

#[test]
fn oversized_length_is_refused_from_four_bytes_without_allocating() {
    let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
    let capacity = buf.capacity();
    let err = FrameDecoder::new(NetLimits::default()).decode(&mut buf).unwrap_err();
    assert_eq!(err.code, ErrorCode::FrameTooLarge);
    assert!(err.message.contains("4294967295 bytes exceeds the limit of 16777216"), "{err}");
    assert_eq!(buf.capacity(), capacity);

    let limits = NetLimits { max_frame_bytes: 100, ..NetLimits::default() };
    let mut big = Frame::Error(ErrorFrame { code: ErrorCode::Malformed, message: "x".repeat(200) }).to_bytes();
    let err = decode_one(&big.split_to(4), limits).unwrap_err();
    assert_eq!(err.code, ErrorCode::FrameTooLarge);

    assert_eq!(decode_one(&[1, 0, 0, 0], NetLimits::default()).unwrap_err().code, ErrorCode::Malformed);
}

#[test]
fn wrong_version_and_unknown_kind_are_refused_from_the_header() {
    let err = decode_one(&[10, 0, 0, 0, 9], NetLimits::default()).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnsupportedVersion);
    assert_eq!(err.message, "unsupported protocol version 9; this server speaks 1");
    let err = decode_one(&[10, 0, 0, 0, 1, 99], NetLimits::default()).unwrap_err();
    assert_eq!(err.code, ErrorCode::Malformed);
    assert!(err.message.contains("unknown frame kind 99"));
}

#[test]
fn batch_counts_are_checked_before_allocating() {
    let limits = NetLimits { max_batch: 2, ..NetLimits::default() };
    let three = Frame::ToCoordinator(vec![ToCoordinator::Ack { txid: TxId(1) }; 3]).to_bytes();
    assert_eq!(decode_one(&three, limits).unwrap_err().code, ErrorCode::BatchTooLarge);
    assert!(decode_one(&three, NetLimits::default()).is_ok());

    // A count of 60,000 acks in a 10-byte payload is refused before reserving 60,000 slots.
    let mut lying = Vec::new();
    lying.put_u32_le(2 + 4 + 9);
    lying.put_u8(PROTOCOL_VERSION);
    lying.put_u8(FrameKind::ToCoordinator as u8);
    lying.put_u32_le(60_000);
    ToCoordinator::Ack { txid: TxId(1) }.encode(&mut lying);
    let err = decode_one(&lying, NetLimits::default()).unwrap_err();
    assert_eq!(err.code, ErrorCode::Malformed);
    assert!(err.message.contains("cannot fit"), "{err}");

    // Trailing bytes inside a frame are malformed.
    let mut trailing = Frame::Submits(vec![]).to_bytes().to_vec();
    trailing.push(0);
    trailing[0] += 1;
    assert!(decode_one(&trailing, NetLimits::default()).unwrap_err().message.contains("trailing"));
}

#[test]
fn interactive_requests_are_checked_against_the_limits_before_allocating() {
    let requests = || sample_interactive(TxId::new(Epoch(2), 41));
    let frame = Frame::Interactive(requests()).to_bytes();
    let limits = NetLimits { max_batch: 3, ..NetLimits::default() };
    assert_eq!(decode_one(&frame, limits).unwrap_err().code, ErrorCode::BatchTooLarge);

    // An Execute with more ops than a transaction may have never decodes.
    let few_ops = NetLimits { engine: twophase_engine::Limits { max_ops_per_tx: 1, ..Default::default() }, ..limits };
    let err = decode_one(&frame, NetLimits { max_batch: 4, ..few_ops }).unwrap_err();
    assert_eq!(err.code, ErrorCode::Malformed, "{err}");

    // A count of 1,000 requests in a frame holding one is refused before reserving them.
    let mut lying = Vec::new();
    let begin = &requests()[0];
    let mut body = Vec::new();
    begin.encode(&mut body);
    lying.put_u32_le(2 + 4 + body.len() as u32);
    lying.put_u8(PROTOCOL_VERSION);
    lying.put_u8(FrameKind::Interactive as u8);
    lying.put_u32_le(1_000);
    lying.extend_from_slice(&body);
    let err = decode_one(&lying, NetLimits::default()).unwrap_err();
    assert!(err.message.contains("cannot fit"), "{err}");
    assert_eq!(body.len(), <Interactive as BatchItem>::MIN_BYTES, "a Begin is the smallest request");

    // An unknown request tag is malformed.
    let mut unknown = Frame::Interactive(vec![begin.clone()]).to_bytes().to_vec();
    unknown[HEADER_BYTES + 4] = 9;
    let err = decode_one(&unknown, NetLimits::default()).unwrap_err();
    assert!(err.message.contains("unknown interactive request 9"), "{err}");
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = FrameDecoder::new(NetLimits::default());
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).unwrap() {
        frames.push(frame);
    }
    assert!(buf.is_empty());
    frames
}

#[test]
fn batch_writer_rolls_over_on_count_and_size() {
    let acks: Vec<ToCoordinator> = (0..10).map(|i| ToCoordinator::Ack { txid: TxId(i) }).collect();
    let limits = NetLimits { max_batch: 4, ..NetLimits::default() };
    let mut writer = BatchWriter::<ToCoordinator>::new(&limits);
    for ack in &acks {
        writer.push(ack).unwrap();
    }
    assert_eq!(writer.messages(), 10);
    let frames = decode_all(&writer.take());
    assert_eq!(frames.len(), 3);
    let flat: Vec<ToCoordinator> =
        frames.into_iter().flat_map(|f| if let Frame::ToCoordinator(m) = f { m } else { panic!() }).collect();
    assert_eq!(flat, acks);
    assert!(writer.is_empty());

    // 2 + 4 (count) + 3 × 9 bytes fit in 33; the fourth message rolls over.
    let limits = NetLimits { max_frame_bytes: 33, ..NetLimits::default() };
    let mut writer = BatchWriter::<ToParticipant>::new(&limits);
    writer.set_epoch(Epoch(5));
    let commits: Vec<ToParticipant> = (0..7).map(|i| ToParticipant::Commit { txid: TxId(i) }).collect();
    for commit in &commits {
        writer.push(commit).unwrap();
    }
    let bytes = writer.finish().to_vec();
    writer.clear();
    let frames = decode_all(&bytes);
    assert!(frames.len() > 2);
    let mut flat = Vec::new();
    for frame in frames {
        let Frame::ToParticipant { epoch, messages } = frame else { panic!() };
        assert_eq!(epoch, Epoch(5));
        let encoded = Frame::ToParticipant { epoch, messages: messages.clone() }.to_bytes();
        assert!(encoded.len() - 4 <= 33);
        flat.extend(messages);
    }
    assert_eq!(flat, commits);

    // A message bigger than any frame is refused and leaves the writer usable.
    let limits = NetLimits { max_frame_bytes: 50, ..NetLimits::default() };
    let mut writer = BatchWriter::<Submit>::new(&limits);
    let small = Submit { client: ClientId(1), seq: 1, ops: vec![] };
    writer.push(&small).unwrap();
    let big = Submit {
        client: ClientId(1),
        seq: 2,
        ops: vec![Op { participant: ParticipantId(1), key: key(&"k".repeat(50)), kind: OpKind::Get }],
    };
    let err = writer.push(&big).unwrap_err();
    assert_eq!(err.max_frame_bytes, 50);
    writer.push(&small).unwrap();
    assert_eq!(decode_all(&writer.take()), vec![Frame::Submits(vec![small.clone(), small])]);
}

proptest::proptest! {
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let mut buf = BytesMut::from(&data[..]);
        let mut decoder = FrameDecoder::new(NetLimits::default());
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    }

    #[test]
    fn garbage_behind_a_valid_header_never_panics(
        kind in proptest::sample::select(vec![1u8, 2, 3, 16, 17, 18, 19]),
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
    ) {
        let mut data = Vec::new();
        data.put_u32_le(2 + body.len() as u32);
        data.put_u8(PROTOCOL_VERSION);
        data.put_u8(kind);
        data.extend_from_slice(&body);
        let _ = decode_one(&data, NetLimits::default());
    }

    #[test]
    fn mutated_frames_never_panic(index in 0usize..9, flips in proptest::collection::vec((0usize..512, proptest::num::u8::ANY), 1..4)) {
        let mut data = sample_frames()[index].to_bytes().to_vec();
        for (at, byte) in flips {
            let at = at % data.len();
            data[at] = byte;
        }
        let _ = decode_one(&data, NetLimits::default());
    }
}

#[test]
fn every_error_code_round_trips_through_its_number() {
    for number in 0..=12u16 {
        let code = ErrorCode::from_code(number);
        assert_eq!(code.code(), number);
        assert_eq!(matches!(code, ErrorCode::Other(_)), !(1..=9).contains(&number), "{code}");
    }
    assert_eq!(ErrorCode::from_code(8), ErrorCode::Unauthenticated);
    assert_eq!(ErrorCode::from_code(9), ErrorCode::Forbidden);
    assert_eq!(ErrorCode::Forbidden.to_string(), "forbidden (9)");
}
