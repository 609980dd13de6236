//! Log records of the coordinator and of participants, with their binary encoding.
//! The wal stores `(kind, payload)` pairs and never looks inside; kinds of the two roles
//! are disjoint so an operator's `inspect-log` can decode any log.
//!
//! | kind | record | payload |
//! | --- | --- | --- |
//! | 1 | coordinator Epoch | `u32 epoch` |
//! | 2 | coordinator Commit | `u64 txid \| u64 client \| u64 seq \| list of u16 participants \| list of reads \| u8 reads lost (0 or 1)` |
//! | 3 | coordinator End | `u64 txid` |
//! | 4 | coordinator Staged | `u64 txid \| u64 client \| u64 seq \| list of u16 participants \| list of gets (u16 op index \| u16 participant)` |
//! | 5 | coordinator Abort | `u64 txid` |
//! | 6 | coordinator Register | `u64 client \| u16 length \| identity (UTF-8) \| u64 expired client (0: none)` |
//! | 7 | coordinator SagaBegin | `u64 saga \| u64 client \| u64 seq \| list of steps (list of action ops \| list of compensation ops)` |
//! | 8 | coordinator SagaAttempt | `u64 saga \| u16 step \| u8 compensating (0 or 1) \| u64 txid` |
//! | 9 | coordinator SagaStepDone | `u64 saga \| u16 step \| u8 compensating (0 or 1)` |
//! | 10 | coordinator SagaCompensate | `u64 saga \| u16 failed step \| abort reason` |
//! | 11 | coordinator SagaEnd | `u64 saga` |
//! | 16 | participant Epoch | `u32 highest coordinator epoch seen` |
//! | 17 | participant Prepared | `u64 txid \| list of writes (key, optional value) \| list of read keys` (keys held shared until the decision) |
//! | 18 | participant Committed | `u64 txid` |
//! | 19 | participant Aborted | `u64 txid` |
//! | 64–66, 72–74 | three-phase commit's coordinator and participant records | `threepc::log` |

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes};

use crate::codec::{
    Decode, DecodeError, Encode, Reader, put_count, put_key, put_keys, put_list, put_optional_value, put_string,
    read_keys, read_list,
};
use crate::codec::{put_reads, read_reads};
use crate::message::{MIN_SAGA_STEP_BYTES, SAGA_STEPS_MAX, SagaStep};
use crate::ops::{AbortReason, Key, Limits, Read, Value};
use crate::types::{ClientId, Epoch, ParticipantId, Seq, TxId};

/// Limits for decoding our own records: generous, but still bounded so a corrupt record
/// that slipped past its checksum cannot make us allocate without limit.
pub const RECORD_LIMITS: Limits =
    Limits { max_ops_per_tx: u16::MAX as usize, max_key_bytes: u16::MAX as usize, max_value_bytes: 16 << 20 };

/// The coordinator's log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CoordRecord {
    /// Written (forced) at every start; the new incarnation's epoch.
    Epoch { epoch: Epoch },
    /// The commit decision (forced before a participant hears `Commit`; a client may hear
    /// of it earlier, see `Staged`). Holds what is needed to re-drive phase two and to
    /// answer a client's retry after a restart.
    /// `reads_lost`: committed by a restarted coordinator that could not recover every read
    /// (the client hears `CommittedReadsUnavailable`).
    Commit {
        txid: TxId,
        client: ClientId,
        seq: Seq,
        participants: Vec<ParticipantId>,
        reads: Vec<Read>,
        reads_lost: bool,
    },
    /// Every participant acknowledged; the transaction may be forgotten (not forced).
    End { txid: TxId },
    /// A transaction that writes was started and its prepares sent (forced, in parallel with
    /// the participants' `Prepared` records). Once it is durable and every participant it
    /// names voted Yes the transaction is committed, before any `Commit` record exists: the
    /// client may hear so. A restart that finds it without an outcome asks those
    /// participants (`Query`) and commits only if all of them are prepared. `gets` names
    /// every `Get` of the transaction, so such a restart knows which reads the answers must
    /// bring back (and that none are due when there are none).
    Staged { txid: TxId, client: ClientId, seq: Seq, participants: Vec<ParticipantId>, gets: Vec<GetAt> },
    /// A staged transaction was aborted (forced before the client hears it); it may be
    /// forgotten.
    Abort { txid: TxId },
    /// A client session opened for `identity` (forced before the client hears its id);
    /// `expired` is the session of the same identity it replaced, if the identity was at
    /// its bound, so a replay expires exactly the one the live coordinator did.
    Register { client: ClientId, identity: String, expired: Option<ClientId> },
    /// A saga was accepted (forced before its first step is sent): its request and steps.
    /// `saga` is an id from the txid space, so it never repeats.
    SagaBegin { saga: TxId, client: ClientId, seq: Seq, steps: Vec<SagaStep> },
    /// Step `step` (its compensation if `compensating`) runs as transaction `txid`
    /// (forced before its prepare is sent). A restart finds `txid`'s own records (`Staged`,
    /// `Commit`, `Abort`) and so whether this attempt committed.
    SagaAttempt { saga: TxId, step: u16, compensating: bool, txid: TxId },
    /// Step `step` (its compensation if `compensating`) committed (appended in the step the
    /// attempt's commit is decided).
    SagaStepDone { saga: TxId, step: u16, compensating: bool },
    /// Step `failed` failed for `reason`: the saga compensates the steps before it.
    SagaCompensate { saga: TxId, failed: u16, reason: AbortReason },
    /// The saga ended (forced before its client hears the outcome): completed if it never
    /// compensated, else compensated.
    SagaEnd { saga: TxId },
}

/// A `Get` of a transaction: its op index and the participant it reads at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GetAt {
    pub index: u16,
    pub participant: ParticipantId,
}

impl Encode for GetAt {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16_le(self.index);
        out.put_u16_le(self.participant.0);
    }
}

impl Decode for GetAt {
    fn decode(reader: &mut Reader) -> Result<GetAt, DecodeError> {
        Ok(GetAt { index: reader.u16("get index")?, participant: reader.participant()? })
    }
}

/// One write of a prepared transaction: the final value (None deletes the key).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Write {
    pub key: Key,
    pub value: Option<Value>,
}

/// A participant's log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PartRecord {
    /// The highest coordinator epoch seen (not forced; Prepared records imply it too).
    Epoch { epoch: Epoch },
    /// Prepared to commit these writes (forced before voting Yes), holding shared locks on
    /// `read_keys` until the decision: a restart re-takes both (strict 2PL across crashes).
    ///
    /// `writes` is shared with the participant's prepared entry: appending the record
    /// copies no write set (the record lives until the driver has encoded it).
    Prepared { txid: TxId, writes: Arc<[Write]>, read_keys: Vec<Key> },
    /// The writes are applied (forced before acknowledging).
    Committed { txid: TxId },
    /// A prepared transaction was aborted (not forced: presumed abort).
    Aborted { txid: TxId },
}

pub const KIND_COORD_EPOCH: u8 = 1;
pub const KIND_COORD_COMMIT: u8 = 2;
pub const KIND_COORD_END: u8 = 3;
pub const KIND_COORD_STAGED: u8 = 4;
pub const KIND_COORD_ABORT: u8 = 5;
pub const KIND_COORD_REGISTER: u8 = 6;
pub const KIND_COORD_SAGA_BEGIN: u8 = 7;
pub const KIND_COORD_SAGA_ATTEMPT: u8 = 8;
pub const KIND_COORD_SAGA_STEP_DONE: u8 = 9;
pub const KIND_COORD_SAGA_COMPENSATE: u8 = 10;
pub const KIND_COORD_SAGA_END: u8 = 11;
pub const KIND_PART_EPOCH: u8 = 16;
pub const KIND_PART_PREPARED: u8 = 17;
pub const KIND_PART_COMMITTED: u8 = 18;
pub const KIND_PART_ABORTED: u8 = 19;

/// A record the wal can store: a kind byte and a payload.
pub trait LogRecord: Sized {
    fn kind(&self) -> u8;
    /// Whether a client's answer waits on this record's durability, so the runtime should
    /// sync it at once. Other records (an `End`, the coordinator's `Commit`, a participant's
    /// `Committed`) still gate whatever depends on them, but may wait for the next group
    /// commit: one device flush fewer per transaction. Never affects safety, only when a
    /// sync happens.
    fn urgent(&self) -> bool;
    fn encode_payload(&self, out: &mut Vec<u8>);
    fn decode(kind: u8, payload: Bytes) -> Result<Self, DecodeError>;
}

fn unknown_kind<T>(kind: u8, role: &str) -> Result<T, DecodeError> {
    Err(DecodeError { offset: 0, reason: format!("record kind {kind} is not a {role} record") })
}

fn decode_payload<T>(
    payload: Bytes,
    body: impl FnOnce(&mut Reader) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut reader = Reader::new(payload, RECORD_LIMITS);
    let value = body(&mut reader)?;
    reader.finish()?;
    Ok(value)
}

fn read_txid(reader: &mut Reader) -> Result<TxId, DecodeError> {
    Ok(TxId(reader.u64("txid")?))
}

/// A saga step's index: below [`SAGA_STEPS_MAX`].
fn read_saga_step_index(reader: &mut Reader) -> Result<u16, DecodeError> {
    let step = reader.u16("saga step")?;
    if usize::from(step) >= SAGA_STEPS_MAX {
        return Err(reader.error(format!("saga step {step} is not below the limit of {SAGA_STEPS_MAX}")));
    }
    Ok(step)
}

fn read_flag(reader: &mut Reader, what: &str) -> Result<bool, DecodeError> {
    match reader.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(reader.error(format!("{what} flag {other} is neither 0 nor 1"))),
    }
}

impl Encode for ParticipantId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u16_le(self.0);
    }
}

impl Decode for ParticipantId {
    fn decode(reader: &mut Reader) -> Result<ParticipantId, DecodeError> {
        reader.participant()
    }
}

impl Encode for Write {
    fn encode(&self, out: &mut Vec<u8>) {
        put_key(out, &self.key);
        put_optional_value(out, self.value.as_ref());
    }
}

impl Decode for Write {
    fn decode(reader: &mut Reader) -> Result<Write, DecodeError> {
        Ok(Write { key: reader.key()?, value: reader.optional_value()? })
    }
}

/// The request part shared by `Commit` and `Staged`.
fn put_request(out: &mut Vec<u8>, txid: TxId, client: ClientId, seq: Seq, participants: &[ParticipantId]) {
    out.put_u64_le(txid.0);
    out.put_u64_le(client.0);
    out.put_u64_le(seq);
    put_count(out, participants.len());
    for participant in participants {
        participant.encode(out);
    }
}

impl LogRecord for CoordRecord {
    /// `Commit` is not urgent: no client waits on it (the `Staged` record and the votes
    /// carry the commit), only the participants' `Commit` messages and so their locks. It
    /// rides with the next `Staged` group; forcing it on its own made the next request of a
    /// client that waits for each answer find the log busy and wait for a slot.
    fn urgent(&self) -> bool {
        !matches!(self, CoordRecord::End { .. } | CoordRecord::Commit { .. } | CoordRecord::SagaStepDone { .. })
    }

    fn kind(&self) -> u8 {
        match self {
            CoordRecord::Epoch { .. } => KIND_COORD_EPOCH,
            CoordRecord::Commit { .. } => KIND_COORD_COMMIT,
            CoordRecord::End { .. } => KIND_COORD_END,
            CoordRecord::Staged { .. } => KIND_COORD_STAGED,
            CoordRecord::Abort { .. } => KIND_COORD_ABORT,
            CoordRecord::Register { .. } => KIND_COORD_REGISTER,
            CoordRecord::SagaBegin { .. } => KIND_COORD_SAGA_BEGIN,
            CoordRecord::SagaAttempt { .. } => KIND_COORD_SAGA_ATTEMPT,
            CoordRecord::SagaStepDone { .. } => KIND_COORD_SAGA_STEP_DONE,
            CoordRecord::SagaCompensate { .. } => KIND_COORD_SAGA_COMPENSATE,
            CoordRecord::SagaEnd { .. } => KIND_COORD_SAGA_END,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            CoordRecord::Epoch { epoch } => out.put_u32_le(epoch.0),
            CoordRecord::Commit { txid, client, seq, participants, reads, reads_lost } => {
                put_request(out, *txid, *client, *seq, participants);
                put_reads(out, reads);
                out.put_u8(u8::from(*reads_lost));
            }
            CoordRecord::Staged { txid, client, seq, participants, gets } => {
                put_request(out, *txid, *client, *seq, participants);
                put_list(out, gets);
            }
            CoordRecord::End { txid } | CoordRecord::Abort { txid } => out.put_u64_le(txid.0),
            CoordRecord::Register { client, identity, expired } => {
                out.put_u64_le(client.0);
                put_string(out, identity);
                out.put_u64_le(expired.unwrap_or(ClientId::NONE).0);
            }
            CoordRecord::SagaBegin { saga, client, seq, steps } => {
                out.put_u64_le(saga.0);
                out.put_u64_le(client.0);
                out.put_u64_le(*seq);
                put_list(out, steps);
            }
            CoordRecord::SagaAttempt { saga, step, compensating, txid } => {
                out.put_u64_le(saga.0);
                out.put_u16_le(*step);
                out.put_u8(u8::from(*compensating));
                out.put_u64_le(txid.0);
            }
            CoordRecord::SagaStepDone { saga, step, compensating } => {
                out.put_u64_le(saga.0);
                out.put_u16_le(*step);
                out.put_u8(u8::from(*compensating));
            }
            CoordRecord::SagaCompensate { saga, failed, reason } => {
                out.put_u64_le(saga.0);
                out.put_u16_le(*failed);
                reason.encode(out);
            }
            CoordRecord::SagaEnd { saga } => out.put_u64_le(saga.0),
        }
    }

    fn decode(kind: u8, payload: Bytes) -> Result<CoordRecord, DecodeError> {
        match kind {
            KIND_COORD_EPOCH => decode_payload(payload, |r| Ok(CoordRecord::Epoch { epoch: Epoch(r.u32("epoch")?) })),
            KIND_COORD_COMMIT => decode_payload(payload, |r| {
                Ok(CoordRecord::Commit {
                    txid: read_txid(r)?,
                    client: ClientId(r.u64("client")?),
                    seq: r.u64("seq")?,
                    participants: read_list(r, u16::MAX as usize, 2, "participants")?,
                    reads: read_reads(r)?,
                    reads_lost: match r.u8("reads lost")? {
                        0 => false,
                        1 => true,
                        other => return Err(r.error(format!("reads-lost flag {other} is neither 0 nor 1"))),
                    },
                })
            }),
            KIND_COORD_END => decode_payload(payload, |r| Ok(CoordRecord::End { txid: read_txid(r)? })),
            KIND_COORD_STAGED => decode_payload(payload, |r| {
                Ok(CoordRecord::Staged {
                    txid: read_txid(r)?,
                    client: ClientId(r.u64("client")?),
                    seq: r.u64("seq")?,
                    participants: read_list(r, u16::MAX as usize, 2, "participants")?,
                    gets: read_list(r, u16::MAX as usize, 4, "gets")?,
                })
            }),
            KIND_COORD_ABORT => decode_payload(payload, |r| Ok(CoordRecord::Abort { txid: read_txid(r)? })),
            KIND_COORD_REGISTER => decode_payload(payload, |r| {
                let client = ClientId(r.u64("client")?);
                let identity = r.string("identity")?;
                let expired = Some(ClientId(r.u64("expired client")?)).filter(|c| *c != ClientId::NONE);
                Ok(CoordRecord::Register { client, identity, expired })
            }),
            KIND_COORD_SAGA_BEGIN => decode_payload(payload, |r| {
                let saga = read_txid(r)?;
                let client = ClientId(r.u64("client")?);
                let seq = r.u64("seq")?;
                let steps = read_list(r, SAGA_STEPS_MAX, MIN_SAGA_STEP_BYTES, "saga steps")?;
                Ok(CoordRecord::SagaBegin { saga, client, seq, steps })
            }),
            KIND_COORD_SAGA_ATTEMPT => decode_payload(payload, |r| {
                let saga = read_txid(r)?;
                let step = read_saga_step_index(r)?;
                let compensating = read_flag(r, "compensating")?;
                Ok(CoordRecord::SagaAttempt { saga, step, compensating, txid: read_txid(r)? })
            }),
            KIND_COORD_SAGA_STEP_DONE => decode_payload(payload, |r| {
                let saga = read_txid(r)?;
                let step = read_saga_step_index(r)?;
                Ok(CoordRecord::SagaStepDone { saga, step, compensating: read_flag(r, "compensating")? })
            }),
            KIND_COORD_SAGA_COMPENSATE => decode_payload(payload, |r| {
                let saga = read_txid(r)?;
                let failed = read_saga_step_index(r)?;
                Ok(CoordRecord::SagaCompensate { saga, failed, reason: AbortReason::decode(r)? })
            }),
            KIND_COORD_SAGA_END => decode_payload(payload, |r| Ok(CoordRecord::SagaEnd { saga: read_txid(r)? })),
            other => unknown_kind(other, "coordinator"),
        }
    }
}

impl LogRecord for PartRecord {
    fn urgent(&self) -> bool {
        matches!(self, PartRecord::Prepared { .. })
    }

    fn kind(&self) -> u8 {
        match self {
            PartRecord::Epoch { .. } => KIND_PART_EPOCH,
            PartRecord::Prepared { .. } => KIND_PART_PREPARED,
            PartRecord::Committed { .. } => KIND_PART_COMMITTED,
            PartRecord::Aborted { .. } => KIND_PART_ABORTED,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            PartRecord::Epoch { epoch } => out.put_u32_le(epoch.0),
            PartRecord::Prepared { txid, writes, read_keys } => {
                out.put_u64_le(txid.0);
                put_count(out, writes.len());
                for write in writes.iter() {
                    write.encode(out);
                }
                put_keys(out, read_keys);
            }
            PartRecord::Committed { txid } | PartRecord::Aborted { txid } => out.put_u64_le(txid.0),
        }
    }

    fn decode(kind: u8, payload: Bytes) -> Result<PartRecord, DecodeError> {
        match kind {
            KIND_PART_EPOCH => decode_payload(payload, |r| Ok(PartRecord::Epoch { epoch: Epoch(r.u32("epoch")?) })),
            KIND_PART_PREPARED => decode_payload(payload, |r| {
                let txid = read_txid(r)?;
                let writes: Vec<Write> = read_list(r, u16::MAX as usize, 3, "writes")?;
                let read_keys = read_keys(r, u16::MAX as usize, "read keys")?;
                Ok(PartRecord::Prepared { txid, writes: writes.into(), read_keys })
            }),
            KIND_PART_COMMITTED => decode_payload(payload, |r| Ok(PartRecord::Committed { txid: read_txid(r)? })),
            KIND_PART_ABORTED => decode_payload(payload, |r| Ok(PartRecord::Aborted { txid: read_txid(r)? })),
            other => unknown_kind(other, "participant"),
        }
    }
}

/// Either role's record, for tools that read any log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AnyRecord {
    Coordinator(CoordRecord),
    Participant(PartRecord),
}

impl AnyRecord {
    pub fn decode(kind: u8, payload: Bytes) -> Result<AnyRecord, DecodeError> {
        if kind < KIND_PART_EPOCH {
            CoordRecord::decode(kind, payload).map(AnyRecord::Coordinator)
        } else {
            PartRecord::decode(kind, payload).map(AnyRecord::Participant)
        }
    }
}

impl fmt::Display for AnyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyRecord::Coordinator(CoordRecord::Epoch { epoch }) => write!(f, "EPOCH {}", epoch.0),
            AnyRecord::Coordinator(CoordRecord::Commit { txid, client, seq, participants, reads, reads_lost }) => {
                let names: Vec<String> = participants.iter().map(|p| p.to_string()).collect();
                write!(
                    f,
                    "COMMIT {txid} client={} seq={seq} participants=[{}] reads={}{}",
                    client.0,
                    names.join(","),
                    reads.len(),
                    if *reads_lost { " reads-lost" } else { "" }
                )
            }
            AnyRecord::Coordinator(CoordRecord::End { txid }) => write!(f, "END {txid}"),
            AnyRecord::Coordinator(CoordRecord::Staged { txid, client, seq, participants, gets }) => {
                let names: Vec<String> = participants.iter().map(|p| p.to_string()).collect();
                write!(
                    f,
                    "STAGED {txid} client={} seq={seq} participants=[{}] gets={}",
                    client.0,
                    names.join(","),
                    gets.len()
                )
            }
            AnyRecord::Coordinator(CoordRecord::Abort { txid }) => write!(f, "ABORT {txid}"),
            AnyRecord::Coordinator(CoordRecord::Register { client, identity, expired }) => {
                write!(f, "REGISTER client={} identity={identity:?}", client.0)?;
                match expired {
                    Some(expired) => write!(f, " expired={}", expired.0),
                    None => Ok(()),
                }
            }
            AnyRecord::Coordinator(CoordRecord::SagaBegin { saga, client, seq, steps }) => {
                write!(f, "SAGA-BEGIN {saga} client={} seq={seq} steps={}", client.0, steps.len())
            }
            AnyRecord::Coordinator(CoordRecord::SagaAttempt { saga, step, compensating, txid }) => {
                let what = if *compensating { "compensation" } else { "step" };
                write!(f, "SAGA-ATTEMPT {saga} {what}={step} txid={txid}")
            }
            AnyRecord::Coordinator(CoordRecord::SagaStepDone { saga, step, compensating }) => {
                let what = if *compensating { "compensation" } else { "step" };
                write!(f, "SAGA-DONE {saga} {what}={step}")
            }
            AnyRecord::Coordinator(CoordRecord::SagaCompensate { saga, failed, reason }) => {
                write!(f, "SAGA-COMPENSATE {saga} failed-step={failed} reason={}", reason.label())
            }
            AnyRecord::Coordinator(CoordRecord::SagaEnd { saga }) => write!(f, "SAGA-END {saga}"),
            AnyRecord::Participant(PartRecord::Epoch { epoch }) => write!(f, "EPOCH-SEEN {}", epoch.0),
            AnyRecord::Participant(PartRecord::Prepared { txid, writes, read_keys }) => {
                write!(f, "PREPARED {txid} writes={} read-keys={}", writes.len(), read_keys.len())
            }
            AnyRecord::Participant(PartRecord::Committed { txid }) => write!(f, "COMMITTED {txid}"),
            AnyRecord::Participant(PartRecord::Aborted { txid }) => write!(f, "ABORTED {txid}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::tests::key;

    /// Encodes `record`, decodes it back equal, and checks that every prefix and a trailing
    /// byte are refused (the 3PC records' tests use it too).
    pub(crate) fn round_trip<R: LogRecord + PartialEq + fmt::Debug>(record: R) {
        let mut payload = Vec::new();
        record.encode_payload(&mut payload);
        let payload = Bytes::from(payload);
        assert_eq!(R::decode(record.kind(), payload.clone()).unwrap(), record);
        for cut in 0..payload.len() {
            assert!(R::decode(record.kind(), payload.slice(..cut)).is_err(), "prefix {cut} decoded");
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(R::decode(record.kind(), Bytes::from(longer)).is_err(), "trailing byte accepted");
    }

    #[test]
    fn every_record_round_trips() {
        let txid = TxId::new(Epoch(2), 41);
        round_trip(CoordRecord::Epoch { epoch: Epoch(9) });
        round_trip(CoordRecord::Commit {
            txid,
            client: ClientId(5),
            seq: 8,
            participants: vec![ParticipantId(1), ParticipantId(3)],
            reads: vec![Read { index: 1, value: Some(key("v")) }],
            reads_lost: false,
        });
        round_trip(CoordRecord::Commit {
            txid,
            client: ClientId(5),
            seq: 8,
            participants: vec![ParticipantId(1)],
            reads: vec![],
            reads_lost: true,
        });
        round_trip(CoordRecord::End { txid });
        round_trip(CoordRecord::Staged {
            txid,
            client: ClientId(5),
            seq: 8,
            participants: vec![ParticipantId(2), ParticipantId(3)],
            gets: vec![GetAt { index: 1, participant: ParticipantId(3) }],
        });
        round_trip(CoordRecord::Abort { txid });
        round_trip(CoordRecord::Register { client: ClientId(1 << 40 | 9), identity: "bench-1".into(), expired: None });
        round_trip(CoordRecord::Register {
            client: ClientId(1 << 40 | 9),
            identity: "é".into(),
            expired: Some(ClientId(1 << 40 | 2)),
        });
        let op = |k: &str, delta| crate::ops::Op {
            participant: ParticipantId(2),
            key: key(k),
            kind: crate::ops::OpKind::Add { delta, floor: 0 },
        };
        round_trip(CoordRecord::SagaBegin {
            saga: txid,
            client: ClientId(5),
            seq: 9,
            steps: vec![
                SagaStep { action: vec![op("a", -5)], compensation: vec![op("a", 5)] },
                SagaStep { action: vec![op("b", 5)], compensation: vec![] },
            ],
        });
        round_trip(CoordRecord::SagaAttempt { saga: txid, step: 3, compensating: true, txid: TxId::new(Epoch(2), 50) });
        round_trip(CoordRecord::SagaStepDone { saga: txid, step: 15, compensating: false });
        round_trip(CoordRecord::SagaCompensate {
            saga: txid,
            failed: 2,
            reason: AbortReason::Constraint {
                participant: ParticipantId(2),
                key: key("a"),
                value: 1,
                delta: -5,
                floor: 0,
            },
        });
        round_trip(CoordRecord::SagaEnd { saga: txid });
        round_trip(PartRecord::Epoch { epoch: Epoch(4) });
        round_trip(PartRecord::Prepared {
            txid,
            writes: vec![Write { key: key("a"), value: Some(key("1")) }, Write { key: key("b"), value: None }].into(),
            read_keys: vec![],
        });
        round_trip(PartRecord::Prepared { txid, writes: vec![].into(), read_keys: vec![key("c"), key("")] });
        round_trip(PartRecord::Committed { txid });
        round_trip(PartRecord::Aborted { txid });
    }

    #[test]
    fn saga_records_refuse_out_of_range_steps_and_flags() {
        let txid = TxId::new(Epoch(2), 41);
        let mut payload = Vec::new();
        CoordRecord::SagaStepDone { saga: txid, step: 1, compensating: false }.encode_payload(&mut payload);
        payload[8] = SAGA_STEPS_MAX as u8; // The step index.
        let err = CoordRecord::decode(KIND_COORD_SAGA_STEP_DONE, Bytes::from(payload.clone())).unwrap_err();
        assert!(err.reason.contains("saga step"), "{err:?}");
        payload[8] = 1;
        payload[10] = 2; // The compensating flag.
        let err = CoordRecord::decode(KIND_COORD_SAGA_STEP_DONE, Bytes::from(payload)).unwrap_err();
        assert!(err.reason.contains("neither 0 nor 1"), "{err:?}");
    }

    #[test]
    fn wrong_role_and_unknown_kinds_are_refused() {
        assert!(CoordRecord::decode(KIND_PART_COMMITTED, Bytes::from_static(&[0; 8])).is_err());
        assert!(PartRecord::decode(KIND_COORD_END, Bytes::from_static(&[0; 8])).is_err());
        let err = AnyRecord::decode(200, Bytes::new()).unwrap_err();
        assert!(err.reason.contains("200"));
        let end = AnyRecord::decode(KIND_COORD_END, Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!(end.to_string(), "END t0.1");
    }
}
