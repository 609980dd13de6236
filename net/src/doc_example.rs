//! Keeps the worked example of docs/PROTOCOL.md honest: the hex dumps in the document must be
//! exactly what this code encodes, and must decode back to the same frames.

use bytes::{Bytes, BytesMut};
use twophase_engine::{ClientId, Epoch, Op, OpKind, Outcome, ParticipantId, Reply, Submit};

use crate::frame::{Frame, FrameDecoder, Hello, NetLimits, Role};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

pub(crate) fn example_frames() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "hello",
            Frame::Hello(Hello { role: Role::Client, cluster: "local".into(), node: "c1".into(), epoch: Epoch(0) }),
        ),
        (
            "submit",
            Frame::Submits(vec![Submit {
                client: ClientId(7),
                seq: 1,
                ops: vec![Op {
                    participant: ParticipantId(1),
                    key: Bytes::from_static(b"a"),
                    kind: OpKind::Add { delta: 5, floor: 0 },
                }],
            }]),
        ),
        (
            "reply",
            Frame::Replies(vec![Reply::Outcome {
                client: ClientId(7),
                seq: 1,
                outcome: Outcome::Committed { reads: vec![] },
            }]),
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
