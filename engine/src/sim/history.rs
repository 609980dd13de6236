//! The committed history the simulator observed, in the form the serializability check
//! takes ([`serial::History`]), built from ground truth only: the requests clients sent and
//! when, the outcomes and reads they heard and when, and each participant's durable log
//! (the values its `Prepared` records hold, the order of its `Committed` records).
//!
//! Which version an `Add` read is recovered by replaying it backwards from the value its
//! transaction installed (`Prepared` holds final values): it read that value minus its
//! delta. Hot counters only ever rise by one, so their values identify their versions
//! exactly; account balances can repeat, and the check then pins a read to the span of
//! versions holding its value (sound, less precise; see [`serial`]).

use std::collections::BTreeMap;

use super::checker::Observed;
use super::serial::{self, Access, KeyRef, Seen, TxIndex};
use crate::ops::{Op, OpKind, Outcome, Read, Value};
use crate::participant::{decode_int, encode_int};
use crate::record::{PartRecord, Write};
use crate::sim::workload::participant_id;
use crate::types::{ClientId, Lsn, ParticipantId, Seq, TxId};

type Request = (ClientId, Seq);

/// Every committed transaction of the run, each checked whole (every participant holds a
/// transaction's read locks until the decision, except a sole participant, where the
/// transaction is whole anyway: docs/ARCHITECTURE.md, "Read-only optimisation"), and each
/// key's version order. `committed` maps each request the coordinator durably committed to
/// its txid; transactions that write nothing have no commit record and count as committed
/// when their client heard so.
pub(super) fn build(
    observed: &Observed,
    committed: &BTreeMap<Request, TxId>,
    participant_logs: &[Vec<(Lsn, PartRecord)>],
) -> serial::History {
    let prepared = prepared_writes(participant_logs);
    let mut history = serial::History::default();
    let mut index_of_txid: BTreeMap<TxId, TxIndex> = BTreeMap::new();
    let read_only = observed.outcomes.iter().filter(|(request, outcome)| {
        outcome.is_committed() && !observed.issued[*request].iter().any(|op| op.kind.is_write())
    });
    let requests = committed.iter().map(|(request, txid)| (request, Some(*txid)));
    for (request, txid) in requests.chain(read_only.map(|(request, _)| (request, None))) {
        let Some(ops) = observed.issued.get(request) else { continue }; // Not ours: reported as atomicity.
        let reads = heard_reads(observed.outcomes.get(request));
        let final_writes = |participant| txid.and_then(|txid| prepared.get(&(txid, participant)).copied());
        if let Some(txid) = txid {
            index_of_txid.insert(txid, history.transactions.len());
        }
        let name = match txid {
            Some(txid) => format!("client {} seq {} ({txid})", request.0.0, request.1),
            None => format!("client {} seq {} (read-only)", request.0.0, request.1),
        };
        history.transactions.push(transaction(observed, request, name, accesses(ops, reads, final_writes)));
    }
    history.version_order = version_order(participant_logs, &prepared, &index_of_txid);
    history
}

fn transaction(observed: &Observed, request: &Request, name: String, accesses: Vec<Access>) -> serial::Transaction {
    serial::Transaction {
        name,
        accesses,
        submitted_at: observed.submitted_at[request],
        heard_at: observed.heard_at.get(request).copied(),
    }
}

/// The reads a committed outcome brought back; None if the client heard none (reads
/// unavailable, or no outcome at all): its `Get`s then add nothing to the history.
fn heard_reads(outcome: Option<&Outcome>) -> Option<&[Read]> {
    match outcome {
        Some(Outcome::Committed { reads }) => Some(reads),
        _ => None,
    }
}

/// The transaction's accesses in op order.
/// `final_writes(participant)` gives the values its durable `Prepared` record there holds
/// (None: no such record, reported by the atomicity check; the writes there are then left
/// out).
fn accesses<'p>(
    ops: &[Op],
    reads: Option<&[Read]>,
    final_writes: impl Fn(ParticipantId) -> Option<&'p [Write]>,
) -> Vec<Access> {
    let before_after = values_around_writes(ops, &final_writes);
    let mut accesses = Vec::with_capacity(ops.len() + 1);
    for (index, op) in ops.iter().enumerate() {
        let key: KeyRef = (op.participant, op.key.clone());
        match &op.kind {
            OpKind::Get => {
                let read = reads.and_then(|reads| reads.iter().find(|read| read.index as usize == index));
                if let Some(read) = read {
                    accesses.push(Access::Read { key, seen: Seen::Bytes(read.value.clone()) });
                }
            }
            OpKind::Sql(_) => panic!("the simulator's workloads run no SQL statement"),
            OpKind::Put(_) | OpKind::Delete | OpKind::Add { .. } => {
                let (before, after) = &before_after[index];
                if let Some(before) = before {
                    accesses.push(Access::Read { key: key.clone(), seen: Seen::Int(*before) });
                }
                if let Some(after) = after {
                    accesses.push(Access::Write { key, value: after.clone() });
                }
            }
        }
    }
    accesses
}

/// For each op that writes: the integer it read (for an `Add`) and the value it left (None:
/// not known). The last write of a key left what the `Prepared` record holds, an earlier
/// `Put` or `Delete` its own value; going backwards, an `Add` found what it left minus its
/// delta, and that is what the write before it left.
fn values_around_writes<'p>(
    ops: &[Op],
    final_writes: &impl Fn(ParticipantId) -> Option<&'p [Write]>,
) -> Vec<(Option<i64>, Option<Option<Value>>)> {
    let mut around = vec![(None, None); ops.len()];
    // Per key, what the write seen last (going backwards) found: what the one before left.
    let mut left_by_earlier: BTreeMap<KeyRef, Option<Option<Value>>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate().rev() {
        if !op.kind.is_write() {
            continue;
        }
        let key: KeyRef = (op.participant, op.key.clone());
        let after = match (&op.kind, left_by_earlier.remove(&key)) {
            (_, None) => final_writes(op.participant)
                .and_then(|writes| writes.iter().find(|write| write.key == op.key))
                .map(|write| write.value.clone()),
            (OpKind::Put(value), Some(_)) => Some(Some(value.clone())),
            (OpKind::Delete, Some(_)) => Some(None),
            (_, Some(found_by_later)) => found_by_later,
        };
        let (before, earlier_left) = match &op.kind {
            OpKind::Add { delta, .. } => {
                let before = after.as_ref().and_then(|value| decode_int(value.as_deref())?.checked_sub(*delta));
                (before, before.map(|int| Some(encode_int(int))))
            }
            _ => (None, None),
        };
        left_by_earlier.insert(key, earlier_left);
        around[index] = (before, after);
    }
    around
}

/// The final values of each transaction's `Prepared` record, per participant (the first
/// record: a transaction is prepared once per participant).
fn prepared_writes(participant_logs: &[Vec<(Lsn, PartRecord)>]) -> BTreeMap<(TxId, ParticipantId), &[Write]> {
    let mut prepared = BTreeMap::new();
    for (index, log) in participant_logs.iter().enumerate() {
        let participant = participant_id(index as u16);
        for (_, record) in log {
            if let PartRecord::Prepared { txid, writes, .. } = record {
                prepared.entry((*txid, participant)).or_insert(&writes[..]);
            }
        }
    }
    prepared
}

/// Each key's writers in the order their `Committed` records reached the participant's
/// log: the order the writes were applied in (a write is applied in the step that appends
/// its record, and a crash keeps a prefix of the log).
fn version_order(
    participant_logs: &[Vec<(Lsn, PartRecord)>],
    prepared: &BTreeMap<(TxId, ParticipantId), &[Write]>,
    index_of_txid: &BTreeMap<TxId, TxIndex>,
) -> BTreeMap<KeyRef, Vec<TxIndex>> {
    let mut order: BTreeMap<KeyRef, Vec<TxIndex>> = BTreeMap::new();
    for (index, log) in participant_logs.iter().enumerate() {
        let participant = participant_id(index as u16);
        for (_, record) in log {
            let PartRecord::Committed { txid } = record else { continue };
            let (Some(&writer), Some(writes)) = (index_of_txid.get(txid), prepared.get(&(*txid, participant))) else {
                continue; // Committed without a commit decision or a Prepared record: atomicity.
            };
            for write in *writes {
                order.entry((participant, write.key.clone())).or_default().push(writer);
            }
        }
    }
    order
}
