//! The 3PC records as the wal stores them: `(kind, payload)` with kinds of their own, so
//! no 2PC log can be mistaken for a 3PC one (and the other way round).
//!
//! | kind | record | payload |
//! | --- | --- | --- |
//! | 64 | 3PC coordinator PreCommit | the [`CoordRecord3`] encoding (`codec`) |
//! | 65 | 3PC coordinator Decided | the [`CoordRecord3`] encoding |
//! | 66 | 3PC coordinator End | the [`CoordRecord3`] encoding |
//! | 72 | 3PC participant Uncertain | the [`PartRecord3`] encoding \| list of writes (key, optional value) |
//! | 73 | 3PC participant PreCommitted | the [`PartRecord3`] encoding |
//! | 74 | 3PC participant Decided | the [`PartRecord3`] encoding |
//!
//! The participant's `Uncertain` record carries the write set its resource manager
//! prepared (the runtime's, not the state machine's): replaying the log applies the write
//! sets of committed transactions and re-locks those of undecided ones, so the log alone
//! rebuilds the store (no snapshot yet).

use bytes::Bytes;

use super::{CoordRecord3, PartRecord3};
use crate::codec::{Decode, DecodeError, Encode, MIN_OP_BYTES, Reader, put_list, read_list};
use crate::record::{LogRecord, RECORD_LIMITS, Write};

pub const KIND_3PC_COORD_PRECOMMIT: u8 = 64;
pub const KIND_3PC_COORD_DECIDED: u8 = 65;
pub const KIND_3PC_COORD_END: u8 = 66;
pub const KIND_3PC_PART_UNCERTAIN: u8 = 72;
pub const KIND_3PC_PART_PRECOMMITTED: u8 = 73;
pub const KIND_3PC_PART_DECIDED: u8 = 74;

/// Writes of one `Uncertain` record at most (a transaction's ops at one participant).
pub const WRITES_MAX: usize = u16::MAX as usize;

impl LogRecord for CoordRecord3 {
    fn kind(&self) -> u8 {
        match self {
            CoordRecord3::PreCommit { .. } => KIND_3PC_COORD_PRECOMMIT,
            CoordRecord3::Decided { .. } => KIND_3PC_COORD_DECIDED,
            CoordRecord3::End { .. } => KIND_3PC_COORD_END,
        }
    }

    /// PreCommit messages wait for `PreCommit`, the client's outcome for `Decided`; nothing
    /// waits for `End`.
    fn urgent(&self) -> bool {
        !matches!(self, CoordRecord3::End { .. })
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        self.encode(out);
    }

    fn decode(kind: u8, payload: Bytes) -> Result<CoordRecord3, DecodeError> {
        let record = <CoordRecord3 as Decode>::decode_all(payload, RECORD_LIMITS)?;
        check_kind(kind, record.kind(), "3pc coordinator")?;
        Ok(record)
    }
}

/// A 3PC participant's log record: the state machine's record, and with `Uncertain` the
/// write set the runtime prepared (empty for every other record).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PartLog3 {
    pub record: PartRecord3,
    pub writes: Vec<Write>,
}

impl PartLog3 {
    pub fn new(record: PartRecord3, writes: Vec<Write>) -> PartLog3 {
        assert!(
            writes.is_empty() || matches!(record, PartRecord3::Uncertain { .. }),
            "only an Uncertain record carries writes"
        );
        PartLog3 { record, writes }
    }
}

impl LogRecord for PartLog3 {
    fn kind(&self) -> u8 {
        match self.record {
            PartRecord3::Uncertain { .. } => KIND_3PC_PART_UNCERTAIN,
            PartRecord3::PreCommitted { .. } => KIND_3PC_PART_PRECOMMITTED,
            PartRecord3::Decided { .. } => KIND_3PC_PART_DECIDED,
        }
    }

    /// Each of them gates a message (the vote, the PreCommit acknowledgement, whatever is
    /// said about the decision).
    fn urgent(&self) -> bool {
        true
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        self.record.encode(out);
        if matches!(self.record, PartRecord3::Uncertain { .. }) {
            put_list(out, &self.writes);
        }
    }

    fn decode(kind: u8, payload: Bytes) -> Result<PartLog3, DecodeError> {
        let mut reader = Reader::new(payload, RECORD_LIMITS);
        let record = PartRecord3::decode(&mut reader)?;
        let writes = match record {
            // A write is a key (u16 length) and an optional value (a u8 flag) at least.
            PartRecord3::Uncertain { .. } => read_list(&mut reader, WRITES_MAX, MIN_OP_BYTES - 2, "writes")?,
            _ => Vec::new(),
        };
        reader.finish()?;
        let log = PartLog3 { record, writes };
        check_kind(kind, log.kind(), "3pc participant")?;
        Ok(log)
    }
}

fn check_kind(kind: u8, expected: u8, role: &str) -> Result<(), DecodeError> {
    if kind == expected {
        return Ok(());
    }
    Err(DecodeError { offset: 0, reason: format!("record kind {kind} does not hold this {role} record") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::round_trip;
    use crate::types::{ParticipantId, TxId};

    const T: TxId = TxId(0x0102_0304_0506_0708);

    fn participants() -> Vec<ParticipantId> {
        vec![ParticipantId(1), ParticipantId(2)]
    }

    #[test]
    fn every_3pc_record_round_trips_and_every_prefix_fails() {
        round_trip(CoordRecord3::PreCommit { txid: T, participants: participants() });
        round_trip(CoordRecord3::Decided { txid: T, commit: false, participants: participants() });
        round_trip(CoordRecord3::End { txid: T });
        let writes = vec![
            Write { key: Bytes::from_static(b"alice"), value: Some(Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0])) },
            Write { key: Bytes::from_static(b"bob"), value: None },
        ];
        round_trip(PartLog3::new(PartRecord3::Uncertain { txid: T, participants: participants() }, writes));
        round_trip(PartLog3::new(PartRecord3::Uncertain { txid: T, participants: participants() }, Vec::new()));
        round_trip(PartLog3::new(PartRecord3::PreCommitted { txid: T }, Vec::new()));
        round_trip(PartLog3::new(PartRecord3::Decided { txid: T, commit: true }, Vec::new()));
    }

    #[test]
    fn a_record_under_another_kind_is_refused() {
        let record = CoordRecord3::End { txid: T };
        let mut payload = Vec::new();
        record.encode_payload(&mut payload);
        let refused = <CoordRecord3 as LogRecord>::decode(KIND_3PC_COORD_DECIDED, Bytes::from(payload)).unwrap_err();
        assert!(refused.reason.contains("does not hold"), "{refused:?}");
        let part = PartLog3::new(PartRecord3::PreCommitted { txid: T }, Vec::new());
        let mut payload = Vec::new();
        part.encode_payload(&mut payload);
        assert!(<PartLog3 as LogRecord>::decode(KIND_3PC_PART_DECIDED, Bytes::from(payload)).is_err());
        // 2PC kinds never decode as 3PC records.
        assert!(<PartLog3 as LogRecord>::decode(17, Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 0])).is_err());
    }
}
