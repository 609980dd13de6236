//! The three-phase-commit frame (kind 25, `ThreePc`): a batch of 3PC messages, each with
//! who sends it and to whom, between the 3PC coordinator and its participants and between
//! participants (the termination protocol).
//!
//! Item: `peer from | peer to | message` where a peer is `u8 0` (the coordinator) or
//! `u8 1 | u16 participant id`, and the message is the engine's 3PC encoding
//! (`twophase_engine::threepc`, whose decoder checks the participant count against
//! `PARTICIPANTS_MAX` and the payload length against `PAYLOAD_BYTES_MAX` before allocating).
//! The receiver checks `from` against the connection's identity and `to` against itself.

use bytes::BufMut;
use twophase_engine::ParticipantId;
use twophase_engine::codec::{Decode, DecodeError, Encode, Reader};
use twophase_engine::threepc::{Message, Peer};

use super::{BatchItem, FrameKind};

/// One 3PC message on the wire.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ThreePcItem {
    pub from: Peer,
    pub to: Peer,
    pub message: Message,
}

fn put_peer(out: &mut Vec<u8>, peer: Peer) {
    match peer {
        Peer::Coordinator => out.put_u8(0),
        Peer::Participant(id) => {
            out.put_u8(1);
            out.put_u16_le(id.0);
        }
    }
}

fn read_peer(reader: &mut Reader, what: &str) -> Result<Peer, DecodeError> {
    match reader.u8(what)? {
        0 => Ok(Peer::Coordinator),
        1 => Ok(Peer::Participant(ParticipantId(reader.u16(what)?))),
        other => Err(reader.error(format!("{what}: unknown peer tag {other}"))),
    }
}

impl Encode for ThreePcItem {
    fn encode(&self, out: &mut Vec<u8>) {
        put_peer(out, self.from);
        put_peer(out, self.to);
        self.message.encode(out);
    }
}

impl Decode for ThreePcItem {
    fn decode(reader: &mut Reader) -> Result<ThreePcItem, DecodeError> {
        let from = read_peer(reader, "3pc sender")?;
        let to = read_peer(reader, "3pc receiver")?;
        Ok(ThreePcItem { from, to, message: Message::decode(reader)? })
    }
}

impl BatchItem for ThreePcItem {
    const KIND: FrameKind = FrameKind::ThreePc;
    /// `u8 from | u8 to | u8 tag | u64 txid` (coordinator to coordinator, DecisionAck).
    const MIN_BYTES: usize = 11;
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use twophase_engine::TxId;
    use twophase_engine::threepc::{PARTICIPANTS_MAX, PAYLOAD_BYTES_MAX, ReportedState};

    use super::*;
    use crate::frame::{BatchWriter, ErrorCode, Frame, FrameDecoder, NetLimits};

    const T: TxId = TxId(0x0102_0304_0506_0708);

    fn items() -> Vec<ThreePcItem> {
        let p = |id| Peer::Participant(ParticipantId(id));
        vec![
            ThreePcItem {
                from: Peer::Coordinator,
                to: p(1),
                message: Message::CanCommit {
                    txid: T,
                    participants: vec![ParticipantId(1), ParticipantId(2)],
                    payload: vec![7; 40],
                },
            },
            ThreePcItem { from: p(1), to: Peer::Coordinator, message: Message::Vote { txid: T, yes: true } },
            ThreePcItem {
                from: p(2),
                to: p(1),
                message: Message::StateReport { txid: T, round: 2, state: ReportedState::PreCommitted },
            },
            ThreePcItem { from: p(1), to: p(2), message: Message::DecisionReq { txid: T } },
        ]
    }

    fn decode(bytes: &[u8]) -> Result<Option<Frame>, crate::frame::ProtocolError> {
        FrameDecoder::new(NetLimits::default()).decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn a_batch_round_trips_through_the_batch_writer_and_every_truncation_fails() {
        let mut writer = BatchWriter::<ThreePcItem>::new(&NetLimits::default());
        for item in items() {
            writer.push(&item).unwrap();
        }
        let bytes = writer.take();
        assert_eq!(decode(&bytes).unwrap(), Some(Frame::ThreePc(items())));
        assert_eq!(Frame::ThreePc(items()).to_bytes(), bytes);
        // A prefix of the frame is incomplete; a frame whose length cuts the body is refused.
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]).unwrap(), None, "prefix {cut}");
        }
        for cut in 6..bytes.len() {
            let mut short = bytes[..cut].to_vec();
            short[..4].copy_from_slice(&((cut - 4) as u32).to_le_bytes());
            assert!(decode(&short).is_err(), "a body cut at {cut} decoded");
        }
    }

    /// A frame with kind 25 and `body` after the header.
    fn frame(body: &[u8]) -> Bytes {
        let mut out = Vec::new();
        out.put_u32_le(body.len() as u32 + 2);
        out.put_u8(crate::frame::PROTOCOL_VERSION);
        out.put_u8(FrameKind::ThreePc as u8);
        out.put_slice(body);
        Bytes::from(out)
    }

    #[test]
    fn impossible_counts_and_lengths_are_refused_before_allocating() {
        // A batch count the frame cannot hold.
        let refused = decode(&frame(&1000u32.to_le_bytes())).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Malformed, "{refused:?}");
        // A CanCommit naming more participants than PARTICIPANTS_MAX.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 1, 1, 0, 0]);
        body.extend_from_slice(&T.0.to_le_bytes());
        body.extend_from_slice(&((PARTICIPANTS_MAX + 1) as u16).to_le_bytes());
        body.extend_from_slice(&[0; 16]);
        assert!(decode(&frame(&body)).is_err());
        // A CanCommit payload longer than PAYLOAD_BYTES_MAX.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 1, 1, 0, 0]);
        body.extend_from_slice(&T.0.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&((PAYLOAD_BYTES_MAX + 1) as u32).to_le_bytes());
        let refused = decode(&frame(&body)).unwrap_err();
        assert!(refused.message.contains("exceeds"), "{refused:?}");
        // An unknown peer tag.
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[9, 0, 5]);
        body.extend_from_slice(&T.0.to_le_bytes());
        assert!(decode(&frame(&body)).unwrap_err().message.contains("unknown peer tag"));
    }
}
