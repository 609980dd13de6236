//! Binary encodings of 3PC messages and records (little-endian, as [`crate::codec`]); every
//! count and length is checked against its limit before anything is allocated.
//!
//! Layouts:
//! - participant list: `u16 count | u16 id × count`, at most [`PARTICIPANTS_MAX`], strictly
//!   increasing; bool: `u8` 0 or 1
//! - message: `u8 tag | u64 txid` then 0 CanCommit `participant list | u32 len | payload`
//!   (at most [`PAYLOAD_BYTES_MAX`]); 1 Vote `bool yes`; 2 PreCommit, 3 PreCommitAck,
//!   6 Elect, 7 StateReq `u32 round`; 4 Decision `bool commit`; 5 DecisionAck, 9 DecisionReq
//!   (no body); 8 StateReport `u32 round | u8 state` (0 Uncertain, 1 PreCommitted,
//!   2 Committed, 3 Aborted, 4 Recovering)
//! - coordinator record: `u8 tag | u64 txid` then 0 PreCommit `participant list`;
//!   1 Decided `bool commit | participant list`; 2 End
//! - participant record: `u8 tag | u64 txid` then 0 Uncertain `participant list`;
//!   1 PreCommitted; 2 Decided `bool commit`

use bytes::BufMut;

use super::{CoordRecord3, Message, PARTICIPANTS_MAX, PAYLOAD_BYTES_MAX, PartRecord3, ReportedState};
use crate::codec::{Decode, DecodeError, Encode, Reader, put_count};
use crate::types::{ParticipantId, TxId};

fn put_participants(out: &mut Vec<u8>, participants: &[ParticipantId]) {
    put_count(out, participants.len());
    for participant in participants {
        out.put_u16_le(participant.0);
    }
}

fn read_participants(reader: &mut Reader) -> Result<Vec<ParticipantId>, DecodeError> {
    let count = reader.count(PARTICIPANTS_MAX, 2, "participants")?;
    let mut participants = Vec::with_capacity(count);
    for _ in 0..count {
        let participant = reader.participant()?;
        if participants.last().is_some_and(|last| *last >= participant) {
            return Err(reader.error("participants are not strictly increasing"));
        }
        participants.push(participant);
    }
    Ok(participants)
}

fn read_bool(reader: &mut Reader, what: &str) -> Result<bool, DecodeError> {
    match reader.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(reader.error(format!("{what} {other} is neither 0 nor 1"))),
    }
}

fn head(out: &mut Vec<u8>, tag: u8, txid: TxId) {
    out.put_u8(tag);
    out.put_u64_le(txid.0);
}

fn state_tag(state: ReportedState) -> u8 {
    match state {
        ReportedState::Uncertain => 0,
        ReportedState::PreCommitted => 1,
        ReportedState::Committed => 2,
        ReportedState::Aborted => 3,
        ReportedState::Recovering => 4,
    }
}

impl Encode for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::CanCommit { txid, participants, payload } => {
                head(out, 0, *txid);
                put_participants(out, participants);
                let len = u32::try_from(payload.len()).expect("payload checked against its limit");
                out.put_u32_le(len);
                out.put_slice(payload);
            }
            Message::Vote { txid, yes } => {
                head(out, 1, *txid);
                out.put_u8(u8::from(*yes));
            }
            Message::PreCommit { txid, round } => {
                head(out, 2, *txid);
                out.put_u32_le(*round);
            }
            Message::PreCommitAck { txid, round } => {
                head(out, 3, *txid);
                out.put_u32_le(*round);
            }
            Message::Decision { txid, commit } => {
                head(out, 4, *txid);
                out.put_u8(u8::from(*commit));
            }
            Message::DecisionAck { txid } => head(out, 5, *txid),
            Message::Elect { txid, round } => {
                head(out, 6, *txid);
                out.put_u32_le(*round);
            }
            Message::StateReq { txid, round } => {
                head(out, 7, *txid);
                out.put_u32_le(*round);
            }
            Message::StateReport { txid, round, state } => {
                head(out, 8, *txid);
                out.put_u32_le(*round);
                out.put_u8(state_tag(*state));
            }
            Message::DecisionReq { txid } => head(out, 9, *txid),
        }
    }
}

impl Decode for Message {
    fn decode(reader: &mut Reader) -> Result<Message, DecodeError> {
        let tag = reader.u8("3pc message tag")?;
        let txid = TxId(reader.u64("txid")?);
        Ok(match tag {
            0 => {
                let participants = read_participants(reader)?;
                let len = reader.u32("payload length")? as usize;
                if len > PAYLOAD_BYTES_MAX {
                    return Err(reader.error(format!("payload of {len} bytes exceeds {PAYLOAD_BYTES_MAX}")));
                }
                let payload = reader.slice(len, "payload")?.to_vec();
                Message::CanCommit { txid, participants, payload }
            }
            1 => Message::Vote { txid, yes: read_bool(reader, "vote")? },
            2 => Message::PreCommit { txid, round: reader.u32("round")? },
            3 => Message::PreCommitAck { txid, round: reader.u32("round")? },
            4 => Message::Decision { txid, commit: read_bool(reader, "decision")? },
            5 => Message::DecisionAck { txid },
            6 => Message::Elect { txid, round: reader.u32("round")? },
            7 => Message::StateReq { txid, round: reader.u32("round")? },
            8 => {
                let round = reader.u32("round")?;
                let state = match reader.u8("state")? {
                    0 => ReportedState::Uncertain,
                    1 => ReportedState::PreCommitted,
                    2 => ReportedState::Committed,
                    3 => ReportedState::Aborted,
                    4 => ReportedState::Recovering,
                    other => return Err(reader.error(format!("unknown 3pc state {other}"))),
                };
                Message::StateReport { txid, round, state }
            }
            9 => Message::DecisionReq { txid },
            other => return Err(reader.error(format!("unknown 3pc message {other}"))),
        })
    }
}

impl Encode for CoordRecord3 {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            CoordRecord3::PreCommit { txid, participants } => {
                head(out, 0, *txid);
                put_participants(out, participants);
            }
            CoordRecord3::Decided { txid, commit, participants } => {
                head(out, 1, *txid);
                out.put_u8(u8::from(*commit));
                put_participants(out, participants);
            }
            CoordRecord3::End { txid } => head(out, 2, *txid),
        }
    }
}

impl Decode for CoordRecord3 {
    fn decode(reader: &mut Reader) -> Result<CoordRecord3, DecodeError> {
        let tag = reader.u8("3pc coordinator record tag")?;
        let txid = TxId(reader.u64("txid")?);
        Ok(match tag {
            0 => CoordRecord3::PreCommit { txid, participants: read_participants(reader)? },
            1 => {
                let commit = read_bool(reader, "decision")?;
                CoordRecord3::Decided { txid, commit, participants: read_participants(reader)? }
            }
            2 => CoordRecord3::End { txid },
            other => return Err(reader.error(format!("unknown 3pc coordinator record {other}"))),
        })
    }
}

impl Encode for PartRecord3 {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PartRecord3::Uncertain { txid, participants } => {
                head(out, 0, *txid);
                put_participants(out, participants);
            }
            PartRecord3::PreCommitted { txid } => head(out, 1, *txid),
            PartRecord3::Decided { txid, commit } => {
                head(out, 2, *txid);
                out.put_u8(u8::from(*commit));
            }
        }
    }
}

impl Decode for PartRecord3 {
    fn decode(reader: &mut Reader) -> Result<PartRecord3, DecodeError> {
        let tag = reader.u8("3pc participant record tag")?;
        let txid = TxId(reader.u64("txid")?);
        Ok(match tag {
            0 => PartRecord3::Uncertain { txid, participants: read_participants(reader)? },
            1 => PartRecord3::PreCommitted { txid },
            2 => PartRecord3::Decided { txid, commit: read_bool(reader, "decision")? },
            other => return Err(reader.error(format!("unknown 3pc participant record {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::tests::round_trip;
    use crate::ops::Limits;

    const T: TxId = TxId(0x0102_0304_0506_0708);

    fn ps() -> Vec<ParticipantId> {
        vec![ParticipantId(1), ParticipantId(4), ParticipantId(9)]
    }

    #[test]
    fn every_message_and_record_round_trips_and_every_prefix_fails() {
        let messages = [
            Message::CanCommit { txid: T, participants: ps(), payload: vec![1, 2, 3] },
            Message::Vote { txid: T, yes: true },
            Message::PreCommit { txid: T, round: 0 },
            Message::PreCommitAck { txid: T, round: 7 },
            Message::Decision { txid: T, commit: false },
            Message::DecisionAck { txid: T },
            Message::Elect { txid: T, round: 3 },
            Message::StateReq { txid: T, round: 3 },
            Message::StateReport { txid: T, round: 3, state: ReportedState::Recovering },
            Message::DecisionReq { txid: T },
        ];
        for message in &messages {
            round_trip(message);
        }
        round_trip(&CoordRecord3::PreCommit { txid: T, participants: ps() });
        round_trip(&CoordRecord3::Decided { txid: T, commit: true, participants: ps() });
        round_trip(&CoordRecord3::End { txid: T });
        round_trip(&PartRecord3::Uncertain { txid: T, participants: ps() });
        round_trip(&PartRecord3::PreCommitted { txid: T });
        round_trip(&PartRecord3::Decided { txid: T, commit: true });
    }

    #[test]
    fn bad_counts_lengths_and_tags_are_refused_before_allocating() {
        let decode = |bytes: Vec<u8>| Message::decode_all(Bytes::from(bytes), Limits::default());
        let mut too_many = vec![0];
        too_many.extend_from_slice(&T.0.to_le_bytes());
        too_many.extend_from_slice(&u16::MAX.to_le_bytes());
        assert!(decode(too_many).unwrap_err().reason.contains("exceed the limit"));
        let mut huge_payload = vec![0];
        huge_payload.extend_from_slice(&T.0.to_le_bytes());
        huge_payload.extend_from_slice(&0u16.to_le_bytes());
        huge_payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(huge_payload).unwrap_err().reason.contains("exceeds"));
        let mut unsorted = vec![0];
        unsorted.extend_from_slice(&T.0.to_le_bytes());
        unsorted.extend_from_slice(&[2, 0, 5, 0, 5, 0, 0, 0, 0, 0]);
        assert!(decode(unsorted).unwrap_err().reason.contains("strictly increasing"));
        let mut bad_bool = vec![1];
        bad_bool.extend_from_slice(&T.0.to_le_bytes());
        bad_bool.push(2);
        assert!(decode(bad_bool).is_err());
        let mut bad_tag = vec![42];
        bad_tag.extend_from_slice(&T.0.to_le_bytes());
        assert!(decode(bad_tag).unwrap_err().reason.contains("unknown 3pc message"));
    }
}
