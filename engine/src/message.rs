//! Messages between clients, the coordinator and participants, and their encodings.
//! How messages are batched into frames belongs to the net crate.
//!
//! Layouts (tags are the first byte):
//! - to a participant: 0 Prepare `u64 txid | list of local ops`, 1 Commit `u64 txid`, 2 Abort `u64 txid`,
//!   3 Query `u64 txid`
//! - to the coordinator: 0 Vote `u64 txid | vote`, 1 Ack `u64 txid`, 2 Inquiry `u64 txid`
//! - submit: `u64 client | u64 seq | list of ops`; a registration is a submit with client 0
//!   and no ops, its seq field carrying the client's nonce (see [`Submit::register`])
//! - reply: 0 Outcome `u64 client | u64 seq | outcome`, 1 Rejected `u64 client | u64 seq |
//!   u8 reason` (0 Busy, 1 SeqTooOld, 2 SessionExpired, 3 NotSessionOwner), 2 Registration
//!   `u64 client | u64 nonce | u8 status` (0 registered as `client`; refused with client 0:
//!   1 TableFull, 2 IdentityBusy, 3 BadIdentity). Every reply is at least 18 bytes, the
//!   smallest item a Replies frame counts on.

use bytes::BufMut;

use crate::codec::{Decode, DecodeError, Encode, MIN_OP_BYTES, Reader, put_list, read_list};
use crate::ops::{LocalOp, Op, Outcome, Vote};
use crate::types::{ClientId, Seq, TxId};

/// Coordinator → participant. The sender's epoch travels beside the message (in the
/// simulator with each message, on the wire once per frame).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ToParticipant {
    Prepare {
        txid: TxId,
        ops: Vec<LocalOp>,
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
}

impl ToParticipant {
    pub fn txid(&self) -> TxId {
        match self {
            ToParticipant::Prepare { txid, .. }
            | ToParticipant::Commit { txid }
            | ToParticipant::Abort { txid }
            | ToParticipant::Query { txid } => *txid,
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
}

impl ToCoordinator {
    pub fn txid(&self) -> TxId {
        match self {
            ToCoordinator::Vote { txid, .. } | ToCoordinator::Ack { txid } | ToCoordinator::Inquiry { txid } => *txid,
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
}

impl Reply {
    /// The request answered: `(client, seq)` of a transaction, None for a registration.
    pub fn request(&self) -> Option<(ClientId, Seq)> {
        match self {
            Reply::Outcome { client, seq, .. } | Reply::Rejected { client, seq, .. } => Some((*client, *seq)),
            Reply::Registered { .. } | Reply::RegisterRefused { .. } => None,
        }
    }
}

fn read_txid(reader: &mut Reader) -> Result<TxId, DecodeError> {
    Ok(TxId(reader.u64("txid")?))
}

impl Encode for ToParticipant {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToParticipant::Prepare { txid, ops } => {
                out.put_u8(0);
                out.put_u64_le(txid.0);
                put_list(out, ops);
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
        }
    }
}

impl Decode for ToParticipant {
    fn decode(reader: &mut Reader) -> Result<ToParticipant, DecodeError> {
        match reader.u8("participant message")? {
            0 => {
                let txid = read_txid(reader)?;
                let max = reader.limits().max_ops_per_tx;
                Ok(ToParticipant::Prepare { txid, ops: read_list(reader, max, MIN_OP_BYTES, "ops")? })
            }
            1 => Ok(ToParticipant::Commit { txid: read_txid(reader)? }),
            2 => Ok(ToParticipant::Abort { txid: read_txid(reader)? }),
            3 => Ok(ToParticipant::Query { txid: read_txid(reader)? }),
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
        }
    }
}

impl Decode for ToCoordinator {
    fn decode(reader: &mut Reader) -> Result<ToCoordinator, DecodeError> {
        match reader.u8("coordinator message")? {
            0 => Ok(ToCoordinator::Vote { txid: read_txid(reader)?, vote: Vote::decode(reader)? }),
            1 => Ok(ToCoordinator::Ack { txid: read_txid(reader)? }),
            2 => Ok(ToCoordinator::Inquiry { txid: read_txid(reader)? }),
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
        }
    }
}

impl Decode for Reply {
    fn decode(reader: &mut Reader) -> Result<Reply, DecodeError> {
        let tag = reader.u8("reply")?;
        match tag {
            0 | 1 => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::{key, round_trip};
    use crate::ops::{AbortReason, OpKind, Read};
    use crate::types::{Epoch, ParticipantId};

    #[test]
    fn every_message_round_trips() {
        let txid = TxId::new(Epoch(3), 99);
        let ops = vec![
            LocalOp { index: 0, key: key("a"), kind: OpKind::Add { delta: -1, floor: 0 } },
            LocalOp { index: 2, key: key("b"), kind: OpKind::Get },
        ];
        round_trip(&ToParticipant::Prepare { txid, ops });
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
}
