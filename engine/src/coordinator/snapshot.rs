//! A coordinator's checkpoint: everything its log up to one LSN still matters for, so the
//! log before it can be truncated and a restart replays only the tail. Taken at a step
//! boundary and kept only once that LSN is durable (the driver's job).
//!
//! What the log is needed for after the fact, and so what a checkpoint keeps: the epochs
//! used so far (txids must keep rising; session ids come from the same space), every client
//! session with its identity, the committed outcomes still in its exactly-once window (a
//! retry must get the outcome, never a second execution) and its window floor, every committed transaction not yet acknowledged by all its participants
//! (its `Commit` must be re-driven after a restart), and every staged transaction not yet
//! decided (a restart must resolve it). Decided aborts are forgotten (presumed abort).
//!
//! Layout: `u64 lsn | u32 max_epoch | u32 sessions | (u64 client | u16 length | identity |
//! u64 floor | u32 count | (u64 seq | outcome) × count) × sessions | u32 unfinished | (u64 record lsn | u8 record kind
//! | record payload as u32 length + bytes) × unfinished`, the records being `Commit` or
//! `Staged`, or those of an unfinished saga's state (`SagaBegin`, `SagaCompensate`,
//! `SagaStepDone`, `SagaAttempt`).

use bytes::{BufMut, Bytes};

use crate::codec::{Decode, DecodeError, Encode, Reader, put_string};
use crate::ops::Outcome;
use crate::record::{
    CoordRecord, KIND_COORD_COMMIT, KIND_COORD_SAGA_ATTEMPT, KIND_COORD_SAGA_BEGIN, KIND_COORD_SAGA_COMPENSATE,
    KIND_COORD_SAGA_STEP_DONE, KIND_COORD_STAGED, LogRecord, RECORD_LIMITS,
};
use crate::types::{ClientId, Epoch, Lsn, Seq};

/// One client session: its identity and retained committed outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub client: ClientId,
    pub identity: String,
    /// Requests below this seq were dropped from the window: a retry gets `SeqTooOld`.
    pub floor: Seq,
    /// Committed outcomes (`Committed` or `CommittedReadsUnavailable`), sorted by seq.
    pub committed: Vec<(Seq, Outcome)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorSnapshot {
    /// Covers every record up to and including this LSN.
    pub lsn: Lsn,
    /// The highest epoch any record up to `lsn` named.
    pub max_epoch: Epoch,
    /// Sorted by client, so equal states give equal bytes.
    pub sessions: Vec<SessionSnapshot>,
    /// Transactions without an outcome's end as of `lsn`, with the record a restart carries
    /// on from and its LSN, sorted by LSN: committed ones not yet acknowledged (their
    /// `Commit`) and undecided staged ones (their `Staged`).
    pub unfinished: Vec<(Lsn, CoordRecord)>,
}

impl CoordinatorSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.sessions.len() * 32 + self.unfinished.len() * 64);
        out.put_u64_le(self.lsn.0);
        out.put_u32_le(self.max_epoch.0);
        out.put_u32_le(u32::try_from(self.sessions.len()).expect("sessions are bounded"));
        for session in &self.sessions {
            out.put_u64_le(session.client.0);
            put_string(&mut out, &session.identity);
            out.put_u64_le(session.floor);
            out.put_u32_le(u32::try_from(session.committed.len()).expect("the window is bounded"));
            for (seq, outcome) in &session.committed {
                out.put_u64_le(*seq);
                outcome.encode(&mut out);
            }
        }
        out.put_u32_le(u32::try_from(self.unfinished.len()).expect("unfinished transactions are bounded"));
        let mut payload = Vec::new();
        for (lsn, record) in &self.unfinished {
            assert!(is_unfinished_kind(record.kind()), "only commits, staged and saga records are unfinished");
            payload.clear();
            record.encode_payload(&mut payload);
            out.put_u64_le(lsn.0);
            out.put_u8(record.kind());
            out.put_u32_le(payload.len() as u32);
            out.put_slice(&payload);
        }
        out
    }

    pub fn decode(bytes: Bytes) -> Result<CoordinatorSnapshot, DecodeError> {
        let mut reader = Reader::new(bytes, RECORD_LIMITS);
        let lsn = Lsn(reader.u64("checkpoint lsn")?);
        let max_epoch = Epoch(reader.u32("max epoch")?);
        let clients = bounded_count(&mut reader, "sessions", 22)?;
        let mut sessions = Vec::with_capacity(clients);
        for _ in 0..clients {
            sessions.push(decode_session(&mut reader)?);
        }
        let unfinished_count = bounded_count(&mut reader, "unfinished transactions", 13)?;
        let mut unfinished = Vec::with_capacity(unfinished_count);
        for _ in 0..unfinished_count {
            let record_lsn = Lsn(reader.u64("unfinished record lsn")?);
            let kind = reader.u8("unfinished record kind")?;
            if !is_unfinished_kind(kind) {
                return Err(reader.error(format!("record kind {kind} cannot be unfinished")));
            }
            let length = reader.u32("unfinished record length")? as usize;
            let payload = reader.slice(length, "unfinished record")?;
            unfinished.push((record_lsn, CoordRecord::decode(kind, payload)?));
        }
        reader.finish()?;
        Ok(CoordinatorSnapshot { lsn, max_epoch, sessions, unfinished })
    }
}

/// Commits, staged records, and the records of an unfinished saga's state (its begin, its
/// compensation start, its last step done, its current attempt).
fn is_unfinished_kind(kind: u8) -> bool {
    matches!(
        kind,
        KIND_COORD_COMMIT
            | KIND_COORD_STAGED
            | KIND_COORD_SAGA_BEGIN
            | KIND_COORD_SAGA_ATTEMPT
            | KIND_COORD_SAGA_STEP_DONE
            | KIND_COORD_SAGA_COMPENSATE
    )
}

fn decode_session(reader: &mut Reader) -> Result<SessionSnapshot, DecodeError> {
    let client = ClientId(reader.u64("client")?);
    let identity = reader.string("identity")?;
    let floor = reader.u64("floor")?;
    let count = bounded_count(reader, "committed outcomes", 9)?;
    let mut committed = Vec::with_capacity(count);
    for _ in 0..count {
        let seq = reader.u64("seq")?;
        let outcome = Outcome::decode(reader)?;
        if !outcome.is_committed() {
            return Err(reader.error(format!("session {} keeps a non-committed outcome", client.0)));
        }
        committed.push((seq, outcome));
    }
    Ok(SessionSnapshot { client, identity, floor, committed })
}

/// A `u32` count, refused before allocating when that many items of at least
/// `min_item_bytes` cannot fit in what is left.
fn bounded_count(reader: &mut Reader, what: &str, min_item_bytes: u64) -> Result<usize, DecodeError> {
    let count = reader.u32(what)? as u64;
    if count.saturating_mul(min_item_bytes) > reader.remaining() as u64 {
        return Err(reader.error(format!("{count} {what} cannot fit in {} bytes", reader.remaining())));
    }
    Ok(count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Read;
    use crate::record::GetAt;
    use crate::types::{ParticipantId, TxId};

    pub(crate) fn sample() -> CoordinatorSnapshot {
        let commit = CoordRecord::Commit {
            txid: TxId::new(Epoch(2), 7),
            client: ClientId(9),
            seq: 4,
            participants: vec![ParticipantId(1), ParticipantId(2)],
            reads: vec![Read { index: 1, value: Some(Bytes::from_static(b"v")) }],
            reads_lost: false,
        };
        let staged = CoordRecord::Staged {
            txid: TxId::new(Epoch(2), 8),
            client: ClientId(9),
            seq: 5,
            participants: vec![ParticipantId(3)],
            gets: vec![GetAt { index: 0, participant: ParticipantId(3) }],
        };
        CoordinatorSnapshot {
            lsn: Lsn(40),
            max_epoch: Epoch(2),
            sessions: vec![
                SessionSnapshot {
                    client: ClientId(9),
                    identity: "bench-0".into(),
                    floor: 2,
                    committed: vec![
                        (3, Outcome::Committed { reads: vec![] }),
                        (4, Outcome::Committed { reads: vec![Read { index: 1, value: None }] }),
                        (5, Outcome::CommittedReadsUnavailable),
                    ],
                },
                SessionSnapshot { client: ClientId(10), identity: "idle".into(), floor: 0, committed: vec![] },
            ],
            unfinished: vec![(Lsn(38), commit), (Lsn(39), staged)],
        }
    }

    #[test]
    fn checkpoints_round_trip_and_refuse_damage() {
        let snapshot = sample();
        let bytes = Bytes::from(snapshot.encode());
        assert_eq!(CoordinatorSnapshot::decode(bytes.clone()).unwrap(), snapshot);
        for cut in 0..bytes.len() {
            assert!(CoordinatorSnapshot::decode(bytes.slice(..cut)).is_err(), "prefix {cut}");
        }
        let mut huge = bytes.to_vec();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(CoordinatorSnapshot::decode(Bytes::from(huge)).unwrap_err().reason.contains("cannot fit"));
    }

    #[test]
    fn a_checkpoint_naming_another_record_kind_is_refused() {
        let mut snapshot = sample();
        snapshot.unfinished.truncate(1);
        let mut bytes = snapshot.encode();
        let kind_at = bytes.len() - 4 - commit_payload_len(&snapshot) - 1;
        assert_eq!(bytes[kind_at], KIND_COORD_COMMIT);
        bytes[kind_at] = crate::record::KIND_COORD_END;
        let err = CoordinatorSnapshot::decode(Bytes::from(bytes)).unwrap_err();
        assert!(err.reason.contains("cannot be unfinished"), "{err:?}");
    }

    fn commit_payload_len(snapshot: &CoordinatorSnapshot) -> usize {
        let mut payload = Vec::new();
        snapshot.unfinished[0].1.encode_payload(&mut payload);
        payload.len()
    }
}
