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

/// How a transaction's reads at a participant where it writes nothing enter the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadOnlyShares {
    /// Each such participant's reads are a transaction of their own (see [`shares`]).
    Split,
    /// As `Split` for read-only transactions, but a transaction that writes somewhere keeps
    /// them, as if such a participant held its read locks until the decision.
    WholeInWriters,
}

/// Every committed transaction of the run, and each key's version order.
/// `committed` maps each request the coordinator durably committed to its txid; read-only
/// transactions have no commit record and count as committed when their client heard so.
pub(super) fn build(
    observed: &Observed,
    committed: &BTreeMap<Request, TxId>,
    participant_logs: &[Vec<(Lsn, PartRecord)>],
    read_only_shares: ReadOnlyShares,
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
        for share in shares(request, txid, ops, read_only_shares) {
            if share.holds_writes {
                let txid = txid.expect("only a committed transaction writes");
                index_of_txid.insert(txid, history.transactions.len());
            }
            let accesses = accesses(ops, reads, |participant| (share.keeps)(participant), final_writes);
            history.transactions.push(transaction(observed, request, share.name, accesses));
        }
    }
    history.version_order = version_order(participant_logs, &prepared, &index_of_txid);
    history
}

/// A part of a transaction checked as a transaction of its own.
struct Share {
    name: String,
    keeps: Box<dyn Fn(ParticipantId) -> bool>,
    holds_writes: bool,
}

/// The shares a transaction is checked as. A participant where it only reads votes
/// `ReadOnly` and releases its locks at once, logging nothing (docs/ARCHITECTURE.md,
/// "Read-only optimisation"): its reads there are consistent at that participant but need
/// not sit at the transaction's point of the serial order, since a younger transaction may
/// write there what it read, commit, and be seen elsewhere by transactions that come before
/// it (seed 74 of `SimConfig::standard`, see the test that characterises this). So with
/// [`ReadOnlyShares::Split`] the
/// accesses at participants where it writes are one transaction, and each such read-only
/// participant's reads another, all with the whole transaction's submit and hear times
/// (which bound each share as well). A transaction at one participant stays whole.
fn shares(request: &Request, txid: Option<TxId>, ops: &[Op], read_only_shares: ReadOnlyShares) -> Vec<Share> {
    let (client, seq) = (request.0.0, request.1);
    let name = match txid {
        Some(txid) => format!("client {client} seq {seq} ({txid})"),
        None => format!("client {client} seq {seq} (read-only)"),
    };
    let mut reading_only: Vec<ParticipantId> = ops.iter().map(|op| op.participant).collect();
    reading_only.sort_unstable();
    reading_only.dedup();
    let writing: Vec<ParticipantId> = ops.iter().filter(|op| op.kind.is_write()).map(|op| op.participant).collect();
    reading_only.retain(|participant| !writing.contains(participant));
    let whole = Share { name: name.clone(), keeps: Box::new(|_| true), holds_writes: !writing.is_empty() };
    let single_participant = writing.is_empty() && reading_only.len() == 1;
    let kept = read_only_shares == ReadOnlyShares::WholeInWriters && !writing.is_empty();
    if kept || reading_only.is_empty() || single_participant {
        return vec![whole];
    }
    let mut shares = Vec::with_capacity(reading_only.len() + 1);
    if !writing.is_empty() {
        let keeps = Box::new(move |participant| writing.contains(&participant));
        shares.push(Share { name: name.clone(), keeps, holds_writes: true });
    }
    for participant in reading_only {
        shares.push(Share {
            name: format!("{name}, its reads at {participant}"),
            keeps: Box::new(move |p| p == participant),
            holds_writes: false,
        });
    }
    shares
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

/// The transaction's accesses in op order, at the participants it `keeps`.
/// `final_writes(participant)` gives the values its durable `Prepared` record there holds
/// (None: no such record, reported by the atomicity check; the writes there are then left
/// out).
fn accesses<'p>(
    ops: &[Op],
    reads: Option<&[Read]>,
    keeps: impl Fn(ParticipantId) -> bool,
    final_writes: impl Fn(ParticipantId) -> Option<&'p [Write]>,
) -> Vec<Access> {
    let before_after = values_around_writes(ops, &final_writes);
    let mut accesses = Vec::with_capacity(ops.len() + 1);
    for (index, op) in ops.iter().enumerate() {
        if !keeps(op.participant) {
            continue;
        }
        let key: KeyRef = (op.participant, op.key.clone());
        match &op.kind {
            OpKind::Get => {
                let read = reads.and_then(|reads| reads.iter().find(|read| read.index as usize == index));
                if let Some(read) = read {
                    accesses.push(Access::Read { key, seen: Seen::Bytes(read.value.clone()) });
                }
            }
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
            if let PartRecord::Prepared { txid, writes } = record {
                prepared.entry((*txid, participant)).or_insert(writes.as_slice());
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
