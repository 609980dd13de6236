//! Messages between clients, the coordinator and participants, and their encodings.
//! How messages are batched into frames belongs to the net crate.
//!
//! Layouts (tags are the first byte):
//! - to a participant: 0 Prepare `u64 txid | list of local ops`, 1 Commit `u64 txid`, 2 Abort `u64 txid`,
//!   3 Query `u64 txid`, 4 Execute `u64 txid | u8 isolation | list of local ops`,
//!   5 PrepareExecuted `u64 txid`
//! - to the coordinator: 0 Vote `u64 txid | vote`, 1 Ack `u64 txid`, 2 Inquiry `u64 txid`,
//!   3 Executed `u64 txid | u8 0 | list of reads` or `u64 txid | u8 1 | abort reason`,
//!   4 WaitFor `u64 waiter | key | txid list` (holders, at most 64)
//! - submit: `u64 client | u64 seq | list of ops`; a registration is a submit with client 0
//!   and no ops, its seq field carrying the client's nonce (see [`Submit::register`])
//! - interactive request: `u8 tag | u64 client | u64 seq` then 0 Begin `u8 isolation |
//!   u32 idle_timeout_ms`, 1 Execute `u64 txid | list of ops`, 2 Commit `u64 txid`,
//!   3 Rollback `u64 txid`
//! - reply: 0 Outcome `u64 client | u64 seq | outcome`, 1 Rejected `u64 client | u64 seq |
//!   u8 reason` (0 Busy, 1 SeqTooOld, 2 SessionExpired, 3 NotSessionOwner), 2 Registration
//!   `u64 client | u64 nonce | u8 status` (0 registered as `client`; refused with client 0:
//!   1 TableFull, 2 IdentityBusy, 3 BadIdentity), 3 Began `u64 client | u64 seq | u64 txid`,
//!   4 Executed `u64 client | u64 seq | list of reads`. Every reply is at least 18 bytes,
//!   the smallest item a Replies frame counts on.
//! - saga submit: `u64 client | u64 seq | u16 step count | (list of ops | list of ops) × steps`
//!   (each step's action, then its compensation; see [`SagaSubmit`])

use bytes::BufMut;

use crate::codec::{
    Decode, DecodeError, Encode, MIN_OP_BYTES, Reader, put_key, put_list, put_reads, put_txids, read_list, read_reads,
    read_txids,
};
use crate::ops::Key;
use crate::ops::{AbortReason, Isolation, LocalOp, Op, Outcome, Read, Vote};
use crate::types::{ClientId, ParticipantId, Seq, TxId};

/// Coordinator → participant. The sender's epoch travels beside the message (in the
/// simulator with each message, on the wire once per frame).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ToParticipant {
    /// `sole`: this participant is the transaction's only one. Only then may a participant
    /// where it just reads vote `ReadOnly` and release its read locks at once; with several
    /// participants it holds them, durably, until the decision (docs/ARCHITECTURE.md,
    /// "Read-only optimisation").
    Prepare {
        txid: TxId,
        ops: Vec<LocalOp>,
        sole: bool,
    },
    Commit {
        txid: TxId,
    },
    Abort {
        txid: TxId,
    },
    /// A restarted coordinator resolving a transaction staged by an earlier incarnation:
    /// answer Yes if it is prepared here, No otherwise (and never prepare it afterwards).
    Query {
        txid: TxId,
    },
    /// Run these ops now inside the open interactive transaction `txid` (created here by
    /// its first Execute); `LocalOp.index` is the op's position in the client's Execute
    /// request. Answered with Executed; lock requests may wait (reported with WaitFor).
    Execute {
        txid: TxId,
        isolation: Isolation,
        ops: Vec<LocalOp>,
    },
    /// Prepare what the Executes of `txid` did here; answered with a Vote exactly like
    /// Prepare. (Abort rolls an open transaction back, waking its waiters.)
    PrepareExecuted {
        txid: TxId,
        sole: bool,
    },
}

impl ToParticipant {
    pub fn txid(&self) -> TxId {
        match self {
            ToParticipant::Prepare { txid, .. }
            | ToParticipant::Commit { txid }
            | ToParticipant::Abort { txid }
            | ToParticipant::Query { txid }
            | ToParticipant::Execute { txid, .. }
            | ToParticipant::PrepareExecuted { txid, .. } => *txid,
        }
    }
}

/// Participant → coordinator.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ToCoordinator {
    Vote {
        txid: TxId,
        vote: Vote,
    },
    /// The commit is applied and durable here; the coordinator may forget it.
    Ack {
        txid: TxId,
    },
    /// An in-doubt participant asks for the decision.
    Inquiry {
        txid: TxId,
    },
    /// The answer to an Execute: the reads of its Gets (indexed as in the Execute), or why
    /// it failed, in which case the participant has already rolled `txid` back here.
    Executed {
        txid: TxId,
        result: Result<Vec<Read>, AbortReason>,
    },
    /// `waiter`'s Execute now waits here on `key` for `holders` (the lock holders and
    /// queued requests ahead of it that it conflicts with, at most 64). Replaces any
    /// earlier WaitFor of this waiter from this participant; empty holders: no longer waiting.
    WaitFor {
        waiter: TxId,
        key: Key,
        holders: Vec<TxId>,
    },
}

impl ToCoordinator {
    /// The transaction the message is about (the waiter, for WaitFor).
    pub fn txid(&self) -> TxId {
        match self {
            ToCoordinator::Vote { txid, .. }
            | ToCoordinator::Ack { txid }
            | ToCoordinator::Inquiry { txid }
            | ToCoordinator::Executed { txid, .. } => *txid,
            ToCoordinator::WaitFor { waiter, .. } => *waiter,
        }
    }
}

/// A client's transaction request. `(client, seq)` identifies it across retries; `client`
/// is a session the coordinator assigned at registration.
///
/// A registration travels in the same item: client id 0 ([`ClientId::NONE`], never
/// assigned) and no ops, the seq field carrying a nonce the answer echoes. A transaction
/// without ops is invalid anyway, so the two never mix, and the hot path pays nothing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Submit {
    pub client: ClientId,
    pub seq: Seq,
    pub ops: Vec<Op>,
}

impl Submit {
    /// A request to open a session, answered `Registered { nonce, client }` once the
    /// session is durable (or `RegisterRefused`).
    pub fn register(nonce: u64) -> Submit {
        Submit { client: ClientId::NONE, seq: nonce, ops: Vec::new() }
    }

    /// The nonce, if this is a registration.
    pub fn registration_nonce(&self) -> Option<u64> {
        (self.client == ClientId::NONE && self.ops.is_empty()).then_some(self.seq)
    }
}

/// A client's interactive-transaction request (the one-shot [`Submit`] stays the fast
/// path). `(client, seq)` gives every request exactly-once execution, as for Submit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Interactive {
    /// Open a transaction: answered `Began { txid }`. `idle_timeout_ms` 0 means the
    /// coordinator's default; larger than its maximum is capped.
    Begin { client: ClientId, seq: Seq, isolation: Isolation, idle_timeout_ms: u32 },
    /// Run `ops` (on any participants) inside `txid`: answered `Executed { reads }`, or an
    /// Outcome Aborted when the transaction is over.
    Execute { client: ClientId, seq: Seq, txid: TxId, ops: Vec<Op> },
    /// Commit `txid`: answered with its Outcome.
    Commit { client: ClientId, seq: Seq, txid: TxId },
    /// Roll `txid` back: answered Outcome Aborted(RolledBack).
    Rollback { client: ClientId, seq: Seq, txid: TxId },
}

impl Interactive {
    /// The request's `(client, seq)`.
    pub fn request(&self) -> (ClientId, Seq) {
        match self {
            Interactive::Begin { client, seq, .. }
            | Interactive::Execute { client, seq, .. }
            | Interactive::Commit { client, seq, .. }
            | Interactive::Rollback { client, seq, .. } => (*client, *seq),
        }
    }

    /// The transaction named, None for Begin.
    pub fn txid(&self) -> Option<TxId> {
        match self {
            Interactive::Begin { .. } => None,
            Interactive::Execute { txid, .. }
            | Interactive::Commit { txid, .. }
            | Interactive::Rollback { txid, .. } => Some(*txid),
        }
    }
}

/// Why a request was turned away without being executed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RejectReason {
    /// Too many transactions in flight: retry the same `(client, seq)` after a backoff.
    Busy,
    /// The sequence number is older than the window of outcomes kept for this client: its
    /// outcome is forgotten (the client sent it long ago and must have heard it, or gave up).
    SeqTooOld,
    /// The session does not exist (never registered, or expired: its identity registered
    /// more sessions than it may keep). Whether the request ran is unknown to the
    /// coordinator; it was not run now and never will be under this session.
    SessionExpired,
    /// The session belongs to another identity: this connection may neither submit on it nor
    /// hear its outcomes.
    NotSessionOwner,
}

/// Why a registration was refused (nothing was recorded).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegisterRefusal {
    /// The session table is full.
    TableFull,
    /// The identity holds its maximum of sessions and every one has requests in flight.
    IdentityBusy,
    /// The connection's identity is longer than a session may be bound to.
    BadIdentity,
}

/// Coordinator → client.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reply {
    Outcome {
        client: ClientId,
        seq: Seq,
        outcome: Outcome,
    },
    Rejected {
        client: ClientId,
        seq: Seq,
        reason: RejectReason,
    },
    /// The session `client` is open (its registration record is durable).
    Registered {
        nonce: u64,
        client: ClientId,
    },
    RegisterRefused {
        nonce: u64,
        reason: RegisterRefusal,
    },
    /// An interactive transaction is open as `txid` (answers Begin).
    Began {
        client: ClientId,
        seq: Seq,
        txid: TxId,
    },
    /// An interactive Execute ran: the reads of its Gets, indexed by op position.
    Executed {
        client: ClientId,
        seq: Seq,
        reads: Vec<Read>,
    },
}

impl Reply {
    /// The request answered: `(client, seq)` of a transaction, None for a registration.
    pub fn request(&self) -> Option<(ClientId, Seq)> {
        match self {
            Reply::Outcome { client, seq, .. }
            | Reply::Rejected { client, seq, .. }
            | Reply::Began { client, seq, .. }
            | Reply::Executed { client, seq, .. } => Some((*client, *seq)),
            Reply::Registered { .. } | Reply::RegisterRefused { .. } => None,
        }
    }
}

fn read_txid(reader: &mut Reader) -> Result<TxId, DecodeError> {
    Ok(TxId(reader.u64("txid")?))
}

/// The `sole` flag of a prepare: 0 or 1, anything else refused.
fn read_sole(reader: &mut Reader) -> Result<bool, DecodeError> {
    match reader.u8("sole participant flag")? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(reader.error(format!("sole participant flag {other} is neither 0 nor 1"))),
    }
}

impl Encode for ToParticipant {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToParticipant::Prepare { txid, ops, sole } => {
                out.put_u8(0);
                out.put_u64_le(txid.0);
                put_list(out, ops);
                out.put_u8(u8::from(*sole));
            }
            ToParticipant::Commit { txid } => {
                out.put_u8(1);
                out.put_u64_le(txid.0);
            }
            ToParticipant::Abort { txid } => {
                out.put_u8(2);
                out.put_u64_le(txid.0);
            }
            ToParticipant::Query { txid } => {
                out.put_u8(3);
                out.put_u64_le(txid.0);
            }
            ToParticipant::Execute { txid, isolation, ops } => {
                out.put_u8(4);
                out.put_u64_le(txid.0);
                isolation.encode(out);
                put_list(out, ops);
            }
            ToParticipant::PrepareExecuted { txid, sole } => {
                out.put_u8(5);
                out.put_u64_le(txid.0);
                out.put_u8(u8::from(*sole));
            }
        }
    }
}

impl Decode for ToParticipant {
    fn decode(reader: &mut Reader) -> Result<ToParticipant, DecodeError> {
        match reader.u8("participant message")? {
            0 => {
                let txid = read_txid(reader)?;
                let max = reader.limits().max_ops_per_tx;
                let ops = read_list(reader, max, MIN_OP_BYTES, "ops")?;
                Ok(ToParticipant::Prepare { txid, ops, sole: read_sole(reader)? })
            }
            1 => Ok(ToParticipant::Commit { txid: read_txid(reader)? }),
            2 => Ok(ToParticipant::Abort { txid: read_txid(reader)? }),
            3 => Ok(ToParticipant::Query { txid: read_txid(reader)? }),
            4 => {
                let txid = read_txid(reader)?;
                let isolation = Isolation::decode(reader)?;
                let max = reader.limits().max_ops_per_tx;
                Ok(ToParticipant::Execute { txid, isolation, ops: read_list(reader, max, MIN_OP_BYTES, "ops")? })
            }
            5 => Ok(ToParticipant::PrepareExecuted { txid: read_txid(reader)?, sole: read_sole(reader)? }),
            other => Err(reader.error(format!("unknown participant message {other}"))),
        }
    }
}

impl Encode for ToCoordinator {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToCoordinator::Vote { txid, vote } => {
                out.put_u8(0);
                out.put_u64_le(txid.0);
                vote.encode(out);
            }
            ToCoordinator::Ack { txid } => {
                out.put_u8(1);
                out.put_u64_le(txid.0);
            }
            ToCoordinator::Inquiry { txid } => {
                out.put_u8(2);
                out.put_u64_le(txid.0);
            }
            ToCoordinator::Executed { txid, result } => {
                out.put_u8(3);
                out.put_u64_le(txid.0);
                match result {
                    Ok(reads) => {
                        out.put_u8(0);
                        put_reads(out, reads);
                    }
                    Err(reason) => {
                        out.put_u8(1);
                        reason.encode(out);
                    }
                }
            }
            ToCoordinator::WaitFor { waiter, key, holders } => {
                out.put_u8(4);
                out.put_u64_le(waiter.0);
                put_key(out, key);
                put_txids(out, holders);
            }
        }
    }
}

impl Decode for ToCoordinator {
    fn decode(reader: &mut Reader) -> Result<ToCoordinator, DecodeError> {
        match reader.u8("coordinator message")? {
            0 => Ok(ToCoordinator::Vote { txid: read_txid(reader)?, vote: Vote::decode(reader)? }),
            1 => Ok(ToCoordinator::Ack { txid: read_txid(reader)? }),
            2 => Ok(ToCoordinator::Inquiry { txid: read_txid(reader)? }),
            3 => {
                let txid = read_txid(reader)?;
                let result = match reader.u8("execute result")? {
                    0 => Ok(read_reads(reader)?),
                    1 => Err(AbortReason::decode(reader)?),
                    other => return Err(reader.error(format!("unknown execute result {other}"))),
                };
                Ok(ToCoordinator::Executed { txid, result })
            }
            4 => Ok(ToCoordinator::WaitFor {
                waiter: read_txid(reader)?,
                key: reader.key()?,
                holders: read_txids(reader, "lock holders")?,
            }),
            other => Err(reader.error(format!("unknown coordinator message {other}"))),
        }
    }
}

impl Encode for Submit {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64_le(self.client.0);
        out.put_u64_le(self.seq);
        put_list(out, &self.ops);
    }
}

impl Decode for Submit {
    fn decode(reader: &mut Reader) -> Result<Submit, DecodeError> {
        let client = ClientId(reader.u64("client id")?);
        let seq = reader.u64("sequence number")?;
        let max = reader.limits().max_ops_per_tx;
        Ok(Submit { client, seq, ops: read_list(reader, max, MIN_OP_BYTES, "ops")? })
    }
}

impl Encode for Interactive {
    fn encode(&self, out: &mut Vec<u8>) {
        let (client, seq) = self.request();
        let tag = match self {
            Interactive::Begin { .. } => 0,
            Interactive::Execute { .. } => 1,
            Interactive::Commit { .. } => 2,
            Interactive::Rollback { .. } => 3,
        };
        out.put_u8(tag);
        out.put_u64_le(client.0);
        out.put_u64_le(seq);
        match self {
            Interactive::Begin { isolation, idle_timeout_ms, .. } => {
                isolation.encode(out);
                out.put_u32_le(*idle_timeout_ms);
            }
            Interactive::Execute { txid, ops, .. } => {
                out.put_u64_le(txid.0);
                put_list(out, ops);
            }
            Interactive::Commit { txid, .. } | Interactive::Rollback { txid, .. } => out.put_u64_le(txid.0),
        }
    }
}

impl Decode for Interactive {
    fn decode(reader: &mut Reader) -> Result<Interactive, DecodeError> {
        let tag = reader.u8("interactive request")?;
        if tag > 3 {
            return Err(reader.error(format!("unknown interactive request {tag}")));
        }
        let client = ClientId(reader.u64("client id")?);
        let seq = reader.u64("sequence number")?;
        Ok(match tag {
            0 => Interactive::Begin {
                client,
                seq,
                isolation: Isolation::decode(reader)?,
                idle_timeout_ms: reader.u32("idle timeout")?,
            },
            1 => {
                let txid = read_txid(reader)?;
                let max = reader.limits().max_ops_per_tx;
                Interactive::Execute { client, seq, txid, ops: read_list(reader, max, MIN_OP_BYTES, "ops")? }
            }
            2 => Interactive::Commit { client, seq, txid: read_txid(reader)? },
            _ => Interactive::Rollback { client, seq, txid: read_txid(reader)? },
        })
    }
}

impl Encode for Reply {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Outcome { client, seq, outcome } => {
                out.put_u8(0);
                out.put_u64_le(client.0);
                out.put_u64_le(*seq);
                outcome.encode(out);
            }
            Reply::Rejected { client, seq, reason } => {
                out.put_u8(1);
                out.put_u64_le(client.0);
                out.put_u64_le(*seq);
                out.put_u8(match reason {
                    RejectReason::Busy => 0,
                    RejectReason::SeqTooOld => 1,
                    RejectReason::SessionExpired => 2,
                    RejectReason::NotSessionOwner => 3,
                });
            }
            Reply::Registered { nonce, client } => {
                out.put_u8(2);
                out.put_u64_le(client.0);
                out.put_u64_le(*nonce);
                out.put_u8(0);
            }
            Reply::RegisterRefused { nonce, reason } => {
                out.put_u8(2);
                out.put_u64_le(ClientId::NONE.0);
                out.put_u64_le(*nonce);
                out.put_u8(match reason {
                    RegisterRefusal::TableFull => 1,
                    RegisterRefusal::IdentityBusy => 2,
                    RegisterRefusal::BadIdentity => 3,
                });
            }
            Reply::Began { client, seq, txid } => {
                out.put_u8(3);
                out.put_u64_le(client.0);
                out.put_u64_le(*seq);
                out.put_u64_le(txid.0);
            }
            Reply::Executed { client, seq, reads } => {
                out.put_u8(4);
                out.put_u64_le(client.0);
                out.put_u64_le(*seq);
                put_reads(out, reads);
            }
        }
    }
}

impl Decode for Reply {
    fn decode(reader: &mut Reader) -> Result<Reply, DecodeError> {
        let tag = reader.u8("reply")?;
        match tag {
            0 | 1 => {}
            3 => {
                let client = ClientId(reader.u64("client id")?);
                let seq = reader.u64("sequence number")?;
                return Ok(Reply::Began { client, seq, txid: read_txid(reader)? });
            }
            4 => {
                let client = ClientId(reader.u64("client id")?);
                let seq = reader.u64("sequence number")?;
                return Ok(Reply::Executed { client, seq, reads: read_reads(reader)? });
            }
            2 => {
                let client = ClientId(reader.u64("client id")?);
                let nonce = reader.u64("registration nonce")?;
                let status = reader.u8("registration status")?;
                // A refusal carries client 0 and a registration never does: anything else is
                // malformed (and would re-encode to other bytes).
                if (status == 0) == (client == ClientId::NONE) {
                    return Err(reader.error(format!("registration status {status} with client {}", client.0)));
                }
                let reason = match status {
                    0 => return Ok(Reply::Registered { nonce, client }),
                    1 => RegisterRefusal::TableFull,
                    2 => RegisterRefusal::IdentityBusy,
                    3 => RegisterRefusal::BadIdentity,
                    other => {
                        return Err(reader.error(format!("bad registration status {other} for client {}", client.0)));
                    }
                };
                return Ok(Reply::RegisterRefused { nonce, reason });
            }
            other => return Err(reader.error(format!("unknown reply {other}"))),
        }
        let client = ClientId(reader.u64("client id")?);
        let seq = reader.u64("sequence number")?;
        if tag == 0 {
            return Ok(Reply::Outcome { client, seq, outcome: Outcome::decode(reader)? });
        }
        let reason = match reader.u8("reject reason")? {
            0 => RejectReason::Busy,
            1 => RejectReason::SeqTooOld,
            2 => RejectReason::SessionExpired,
            3 => RejectReason::NotSessionOwner,
            other => return Err(reader.error(format!("unknown reject reason {other}"))),
        };
        Ok(Reply::Rejected { client, seq, reason })
    }
}

/// Most steps a saga may have.
pub const SAGA_STEPS_MAX: usize = 16;
/// Most bytes a saga's steps may take encoded (its `SagaBegin` record, which a restart and a
/// checkpoint carry until the saga ends).
pub const SAGA_BYTES_MAX: usize = 64 * 1024;

/// One step of a saga: a local transaction on one participant (`action`) and the
/// transaction that undoes it there (`compensation`), run only if a later step fails.
/// Every op of both names the same participant.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SagaStep {
    pub action: Vec<Op>,
    pub compensation: Vec<Op>,
}

impl SagaStep {
    /// The participant the step runs on (that of its first action op).
    pub fn participant(&self) -> Option<ParticipantId> {
        self.action.first().map(|op| op.participant)
    }
}

impl Encode for SagaStep {
    fn encode(&self, out: &mut Vec<u8>) {
        put_list(out, &self.action);
        put_list(out, &self.compensation);
    }
}

impl Decode for SagaStep {
    fn decode(reader: &mut Reader) -> Result<SagaStep, DecodeError> {
        let max = reader.limits().max_ops_per_tx;
        let action = read_list(reader, max, MIN_OP_BYTES, "saga action ops")?;
        let compensation = read_list(reader, max, MIN_OP_BYTES, "saga compensation ops")?;
        Ok(SagaStep { action, compensation })
    }
}

/// Smallest encoded step: two empty op lists.
pub const MIN_SAGA_STEP_BYTES: usize = 4;

/// A client's saga request: its steps run in order, each a one-participant transaction;
/// if one fails, the compensations of the steps before it run in reverse order. Answered
/// with one `Reply::Outcome`: `Committed` (no reads) when every step applied, `Aborted`
/// with the failed step's reason once every earlier step was compensated. `(client, seq)`
/// gives it exactly-once execution, as for [`Submit`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SagaSubmit {
    pub client: ClientId,
    pub seq: Seq,
    pub steps: Vec<SagaStep>,
}

impl Encode for SagaSubmit {
    fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64_le(self.client.0);
        out.put_u64_le(self.seq);
        put_list(out, &self.steps);
    }
}

impl Decode for SagaSubmit {
    fn decode(reader: &mut Reader) -> Result<SagaSubmit, DecodeError> {
        let client = ClientId(reader.u64("client id")?);
        let seq = reader.u64("sequence number")?;
        let steps = read_list(reader, SAGA_STEPS_MAX, MIN_SAGA_STEP_BYTES, "saga steps")?;
        Ok(SagaSubmit { client, seq, steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::codec::tests::{key, round_trip};
    use crate::ops::{AbortReason, OpKind, Read};
    use crate::types::{Epoch, ParticipantId};

    #[test]
    fn a_saga_round_trips_and_more_steps_than_the_limit_are_refused() {
        let op = |delta| Op { participant: ParticipantId(1), key: key("a"), kind: OpKind::Add { delta, floor: 0 } };
        let step = SagaStep { action: vec![op(-1)], compensation: vec![op(1)] };
        let saga = SagaSubmit { client: ClientId(3), seq: 4, steps: vec![step.clone(); SAGA_STEPS_MAX] };
        round_trip(&saga);
        let mut bytes = Vec::new();
        SagaSubmit { steps: vec![step; SAGA_STEPS_MAX + 1], ..saga }.encode(&mut bytes);
        let mut reader = Reader::new(Bytes::from(bytes), crate::ops::Limits::default());
        let err = SagaSubmit::decode(&mut reader).unwrap_err();
        assert!(err.reason.contains("saga steps exceed the limit"), "{err:?}");
    }

    #[test]
    fn every_message_round_trips() {
        let txid = TxId::new(Epoch(3), 99);
        let ops = vec![
            LocalOp { index: 0, key: key("a"), kind: OpKind::Add { delta: -1, floor: 0 } },
            LocalOp { index: 2, key: key("b"), kind: OpKind::Get },
        ];
        round_trip(&ToParticipant::Prepare { txid, ops: ops.clone(), sole: false });
        round_trip(&ToParticipant::Prepare { txid, ops, sole: true });
        round_trip(&ToParticipant::Commit { txid });
        round_trip(&ToParticipant::Abort { txid });
        round_trip(&ToParticipant::Query { txid });
        round_trip(&ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![Read { index: 2, value: None }] } });
        round_trip(&ToCoordinator::Ack { txid });
        round_trip(&ToCoordinator::Inquiry { txid });
        let submit = Submit {
            client: ClientId(77),
            seq: 5,
            ops: vec![Op { participant: ParticipantId(1), key: key("x"), kind: OpKind::Put(key("y")) }],
        };
        round_trip(&submit);
        round_trip(&Reply::Outcome {
            client: ClientId(1),
            seq: 2,
            outcome: Outcome::Aborted { reason: AbortReason::Timeout { participant: ParticipantId(2) } },
        });
        round_trip(&Reply::Rejected { client: ClientId(1), seq: 2, reason: RejectReason::Busy });
        for reason in [RejectReason::SeqTooOld, RejectReason::SessionExpired, RejectReason::NotSessionOwner] {
            round_trip(&Reply::Rejected { client: ClientId(1), seq: 2, reason });
        }
        round_trip(&Reply::Registered { nonce: 9, client: ClientId(1 << 40 | 3) });
        for reply in [
            Reply::Registered { nonce: 9, client: ClientId(1) },
            Reply::RegisterRefused { nonce: 9, reason: RegisterRefusal::BadIdentity },
            Reply::Rejected { client: ClientId(1), seq: 2, reason: RejectReason::Busy },
        ] {
            assert!(reply.to_bytes().len() >= 18, "the smallest reply a Replies frame counts on");
        }
        round_trip(&Reply::RegisterRefused { nonce: 9, reason: RegisterRefusal::TableFull });
        round_trip(&Reply::RegisterRefused { nonce: 9, reason: RegisterRefusal::IdentityBusy });
        let register = Submit::register(42);
        round_trip(&register);
        assert_eq!(register.registration_nonce(), Some(42));
        assert_eq!(Submit { client: ClientId(5), seq: 42, ops: vec![] }.registration_nonce(), None);
    }

    #[test]
    fn a_sole_flag_other_than_0_or_1_is_refused() {
        let txid = TxId::new(Epoch(3), 99);
        for message in [
            ToParticipant::Prepare { txid, ops: vec![], sole: true },
            ToParticipant::PrepareExecuted { txid, sole: true },
        ] {
            let mut bytes = message.to_bytes().to_vec();
            *bytes.last_mut().unwrap() = 2;
            let error = ToParticipant::decode_all(Bytes::from(bytes), crate::ops::Limits::default()).unwrap_err();
            assert!(error.reason.contains("sole participant flag 2"), "{error:?}");
        }
    }

    #[test]
    fn interactive_messages_round_trip() {
        let txid = TxId::new(Epoch(3), 99);
        let ops = vec![LocalOp { index: 1, key: key("a"), kind: OpKind::Get }];
        for isolation in [Isolation::Serializable, Isolation::ReadCommitted, Isolation::Optimistic] {
            round_trip(&ToParticipant::Execute { txid, isolation, ops: ops.clone() });
            round_trip(&Interactive::Begin { client: ClientId(4), seq: 1, isolation, idle_timeout_ms: 30_000 });
        }
        round_trip(&ToParticipant::PrepareExecuted { txid, sole: false });
        round_trip(&ToParticipant::PrepareExecuted { txid, sole: true });
        round_trip(&ToCoordinator::Executed { txid, result: Ok(vec![Read { index: 1, value: Some(key("v")) }]) });
        round_trip(&ToCoordinator::Executed { txid, result: Ok(vec![]) });
        let reason = AbortReason::LockTimeout { participant: ParticipantId(2), key: key("a") };
        round_trip(&ToCoordinator::Executed { txid, result: Err(reason) });
        round_trip(&ToCoordinator::WaitFor { waiter: txid, key: key("a"), holders: vec![TxId(1), TxId(2)] });
        round_trip(&ToCoordinator::WaitFor { waiter: txid, key: key("a"), holders: vec![] });
        let op = Op { participant: ParticipantId(1), key: key("x"), kind: OpKind::Add { delta: 5, floor: 0 } };
        let (client, seq) = (ClientId(4), 2);
        let requests = [
            Interactive::Execute { client, seq, txid, ops: vec![op.clone(), op] },
            Interactive::Execute { client, seq, txid, ops: vec![] },
            Interactive::Commit { client, seq, txid },
            Interactive::Rollback { client, seq, txid },
        ];
        for request in &requests {
            round_trip(request);
            assert_eq!((request.request(), request.txid()), ((client, seq), Some(txid)));
        }
        let began = Reply::Began { client, seq, txid };
        let executed = Reply::Executed { client, seq, reads: vec![] };
        for reply in [&began, &executed] {
            round_trip(reply);
            assert!(reply.to_bytes().len() >= 18, "the smallest reply a Replies frame counts on");
            assert_eq!(reply.request(), Some((client, seq)));
        }
        round_trip(&Reply::Executed { client, seq, reads: vec![Read { index: 0, value: None }] });
        round_trip(&Reply::Outcome {
            client,
            seq,
            outcome: Outcome::Aborted { reason: AbortReason::Deadlock { cycle: vec![TxId(5), TxId(3)] } },
        });
    }

    #[test]
    fn interactive_decoders_refuse_bad_tags_and_counts_before_allocating() {
        let limits = crate::ops::Limits::default();
        let err = Interactive::decode_all(Bytes::from_static(&[4]), limits).unwrap_err();
        assert!(err.reason.contains("unknown interactive request 4"), "{err}");
        // Begin with isolation 9.
        let mut begin = vec![0u8];
        begin.extend_from_slice(&[0; 16]);
        begin.push(9);
        begin.extend_from_slice(&[0; 4]);
        let err = Interactive::decode_all(Bytes::from(begin), limits).unwrap_err();
        assert!(err.reason.contains("unknown isolation 9"), "{err}");
        // Execute claiming more ops than the limit.
        let mut execute = vec![1u8];
        execute.extend_from_slice(&[0; 24]);
        execute.extend_from_slice(&u16::MAX.to_le_bytes());
        let err = Interactive::decode_all(Bytes::from(execute), limits).unwrap_err();
        assert!(err.reason.contains("exceed the limit"), "{err}");
        // WaitFor claiming 65 holders.
        let mut wait = vec![4u8];
        wait.extend_from_slice(&[0; 8]);
        wait.extend_from_slice(&[1, 0, b'k']);
        wait.extend_from_slice(&65u16.to_le_bytes());
        wait.extend(std::iter::repeat_n(0u8, 65 * 8));
        let err = ToCoordinator::decode_all(Bytes::from(wait), limits).unwrap_err();
        assert!(err.reason.contains("exceed the limit"), "{err}");
        // Executed with an unknown result tag.
        let mut executed = vec![3u8];
        executed.extend_from_slice(&[0; 8]);
        executed.push(2);
        let err = ToCoordinator::decode_all(Bytes::from(executed), limits).unwrap_err();
        assert!(err.reason.contains("unknown execute result 2"), "{err}");
    }
}
