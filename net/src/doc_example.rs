//! Keeps the worked example of docs/PROTOCOL.md honest: the hex dumps in the document must be
//! exactly what this code encodes, and must decode back to the same frames; the outcomes it
//! shows must be what the participant's key-value store computes for those ops.

use bytes::{Bytes, BytesMut};
use twophase_engine::message::Interactive;
use twophase_engine::ops::Isolation;
use twophase_engine::participant::{KvStore, encode_int};
use twophase_engine::{
    AbortReason, ClientId, Epoch, LocalOp, Op, OpKind, Outcome, ParticipantId, Read, Reply, Submit, TxId, Write,
};

use crate::frame::{Frame, FrameDecoder, Hello, NetLimits, Role, Welcome};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

const CLIENT: ClientId = ClientId(7);
const P1: ParticipantId = ParticipantId(1);

fn key_a() -> Bytes {
    Bytes::from_static(b"a")
}

fn submit(seq: u64, ops: Vec<Op>) -> Frame {
    Frame::Submits(vec![Submit { client: CLIENT, seq, ops }])
}

fn reply(seq: u64, outcome: Outcome) -> Frame {
    Frame::Replies(vec![Reply::Outcome { client: CLIENT, seq, outcome }])
}

/// The document's example, frame by frame: a handshake, an abort, a commit with a read.
pub(crate) fn example_frames() -> Vec<(&'static str, Frame)> {
    let add = |delta, floor| Op { participant: P1, key: key_a(), kind: OpKind::Add { delta, floor } };
    vec![
        (
            "hello",
            Frame::Hello(Hello { role: Role::Client, cluster: "local".into(), node: "app".into(), epoch: Epoch(0) }),
        ),
        (
            "welcome",
            Frame::Welcome(Welcome {
                role: Role::Coordinator,
                cluster: "local".into(),
                node: "c1".into(),
                directory: vec![(P1, "p1".into()), (ParticipantId(2), "p2".into())],
                // What servers send: the example documents the real defaults.
                limits: NetLimits::default(),
            }),
        ),
        ("submit", submit(1, vec![add(-5, 0)])),
        (
            "abort",
            reply(
                1,
                Outcome::Aborted {
                    reason: AbortReason::Constraint { participant: P1, key: key_a(), value: 3, delta: -5, floor: 0 },
                },
            ),
        ),
        ("submit-read", submit(2, vec![add(5, i64::MIN), Op { participant: P1, key: key_a(), kind: OpKind::Get }])),
        (
            "reply",
            reply(
                2,
                Outcome::Committed {
                    reads: vec![Read { index: 1, value: Some(Bytes::copy_from_slice(&8i64.to_le_bytes())) }],
                },
            ),
        ),
    ]
    .into_iter()
    .chain(interactive_example_frames())
    .collect()
}

/// The "Interactive transactions" example: begin, a read, and the reply a deadlock victim
/// gets.
fn interactive_example_frames() -> Vec<(&'static str, Frame)> {
    let txid = TxId::new(Epoch(1), 9);
    let get = Op { participant: P1, key: key_a(), kind: OpKind::Get };
    let eight = Some(Bytes::copy_from_slice(&8i64.to_le_bytes()));
    let begin = Interactive::Begin { client: CLIENT, seq: 3, isolation: Isolation::Serializable, idle_timeout_ms: 0 };
    vec![
        ("begin", Frame::Interactive(vec![begin])),
        ("began", Frame::Replies(vec![Reply::Began { client: CLIENT, seq: 3, txid }])),
        ("execute", Frame::Interactive(vec![Interactive::Execute { client: CLIENT, seq: 4, txid, ops: vec![get] }])),
        (
            "executed",
            Frame::Replies(vec![Reply::Executed {
                client: CLIENT,
                seq: 4,
                reads: vec![Read { index: 0, value: eight }],
            }]),
        ),
        (
            "deadlock",
            reply(5, Outcome::Aborted { reason: AbortReason::Deadlock { cycle: vec![txid, TxId::new(Epoch(1), 8)] } }),
        ),
    ]
}

/// Lower-case hex, 16 bytes a line, bytes separated by one space.
pub(crate) fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn protocol_md_examples_match_the_encoder() {
    let mut missing = Vec::new();
    for (name, frame) in example_frames() {
        let bytes = frame.to_bytes();
        let block = format!("```text {name}\n{}\n```", hex_lines(&bytes));
        if !DOC.contains(&block) {
            missing.push(block);
        }
        let decoded = FrameDecoder::new(NetLimits::default()).decode(&mut BytesMut::from(&bytes[..])).unwrap();
        assert_eq!(decoded, Some(frame));
    }
    assert!(missing.is_empty(), "docs/PROTOCOL.md must contain these examples verbatim:\n{}", missing.join("\n"));
}

/// The ops of a Submit frame as the coordinator hands them to a participant.
fn local_ops(frame: &Frame) -> Vec<LocalOp> {
    let Frame::Submits(submits) = frame else { panic!("not a Submits frame: {frame:?}") };
    let ops = submits[0].ops.iter().enumerate();
    ops.map(|(index, op)| LocalOp { index: index as u16, key: op.key.clone(), kind: op.kind.clone() }).collect()
}

fn outcome(frame: &Frame) -> Outcome {
    let Frame::Replies(replies) = frame else { panic!("not a Replies frame: {frame:?}") };
    let Reply::Outcome { outcome, .. } = &replies[0] else { panic!("not an outcome: {replies:?}") };
    outcome.clone()
}

#[test]
fn protocol_md_outcomes_are_what_the_store_computes() {
    let frames: std::collections::HashMap<_, _> = example_frames().into_iter().collect();
    // The example's starting state: `a` on p1 holds 3.
    let mut store = KvStore::new(0);
    store.apply(&[Write { key: key_a(), value: Some(encode_int(3)) }]);
    let refused = store.evaluate(P1, &local_ops(&frames["submit"])).unwrap_err();
    assert_eq!(outcome(&frames["abort"]), Outcome::Aborted { reason: refused });
    let committed = store.evaluate(P1, &local_ops(&frames["submit-read"])).unwrap();
    assert_eq!(outcome(&frames["reply"]), Outcome::Committed { reads: committed.reads });
}
