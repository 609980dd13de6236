//! Open (interactive) transactions in the built-in store: strict two-phase locking with
//! waiting locks (serializable), read-committed reads that take no lasting lock, or
//! optimistic executes that take no lock at all (`optimistic`: validated at prepare).
//!
//! An execute locks its ops' keys in order; a refused lock queues the request on that key
//! (`waits`) and it resumes from there when granted. Once every lock is held its ops are
//! evaluated over the committed state and the transaction's buffered writes. Read-committed
//! `Get`s take no lock, but wait while a prepared transaction holds the key exclusively (its
//! decision is about to change the committed value), and a write to a key the transaction
//! read earlier fails with `Conflict` if the committed value changed since (no lost update).

use bytes::Bytes;

use super::kv::Slot;
use super::locks::LockMode;
use super::resource::{Execution, RmEvent};
use super::store::KvResource;
use super::waits::Need;
use crate::ops::{AbortReason, Isolation, LocalOp, Read, Value};
use crate::record::Write;
use crate::types::TxId;

/// Holders listed in one wait report at most.
pub const WAIT_HOLDERS_MAX: usize = 64;

#[derive(Debug)]
pub(super) struct OpenTx {
    pub(super) isolation: Isolation,
    /// Keys locked, held until the decision (or the rollback).
    pub(super) locked: Vec<Slot>,
    /// Final value per key written (None: deleted), in first-write order.
    pub(super) writes: Vec<Write>,
    /// Read-committed: the committed values its `Get`s read, per key (first read).
    read_values: Vec<(Slot, Option<Value>)>,
    /// Optimistic: the committed version each key read had when first read (validated at
    /// prepare); keys read only from the transaction's own writes are not listed.
    pub(super) read_versions: Vec<(Slot, u64)>,
    /// Ops run so far, across executes (bounded by `ops_per_open_max`).
    ops_run: usize,
    /// The execute in progress (waiting for a lock).
    pub(super) pending: Option<Pending>,
}

#[derive(Debug)]
pub(super) struct Pending {
    ops: Vec<LocalOp>,
    /// Ops before this one hold what they need.
    next: usize,
    /// Where it waits, and the holders last reported.
    waiting: Option<(Slot, Need, Vec<TxId>)>,
}

impl OpenTx {
    fn new(isolation: Isolation) -> OpenTx {
        OpenTx {
            isolation,
            locked: Vec::new(),
            writes: Vec::new(),
            read_values: Vec::new(),
            read_versions: Vec::new(),
            ops_run: 0,
            pending: None,
        }
    }
}

fn need_of(isolation: Isolation, op: &LocalOp) -> Need {
    match (op.kind.is_write(), isolation) {
        (true, _) => Need::Lock(LockMode::Exclusive),
        (false, Isolation::ReadCommitted) => Need::CommittedRead,
        (false, _) => Need::Lock(LockMode::Shared),
    }
}

impl KvResource {
    pub(super) fn execute_open(&mut self, txid: TxId, isolation: Isolation, ops: Vec<LocalOp>) -> Execution {
        let ops_max = self.limits.ops_per_open_max;
        let open = self.open.entry(txid).or_insert_with(|| OpenTx::new(isolation));
        assert!(open.pending.is_none(), "{txid}: a second execute while one waits");
        open.ops_run += ops.len();
        if open.ops_run > ops_max {
            self.rollback_open(txid);
            let detail = format!("more than {ops_max} operations in one transaction on one participant");
            return Execution::Failed { reason: AbortReason::Invalid { detail } };
        }
        if open.isolation == Isolation::Optimistic {
            return match self.execute_optimistic(txid, &ops) {
                Ok(reads) => Execution::Done { reads },
                Err(reason) => Execution::Failed { reason },
            };
        }
        open.pending = Some(Pending { ops, next: 0, waiting: None });
        match self.advance(txid) {
            None => Execution::Waiting,
            Some(Ok(reads)) => Execution::Done { reads },
            Some(Err(reason)) => Execution::Failed { reason },
        }
    }

    /// Takes what the pending execute's ops need, from where it stopped; evaluates them once
    /// all is held. None: it waits (queued, reported).
    fn advance(&mut self, txid: TxId) -> Option<Result<Vec<Read>, AbortReason>> {
        loop {
            let open = self.open.get(&txid).expect("open");
            let pending = open.pending.as_ref().expect("pending");
            let Some(op) = pending.ops.get(pending.next) else { break };
            let need = need_of(open.isolation, op);
            let key = op.key.clone();
            match self.acquire(txid, &key, need) {
                Ok(()) => self.open.get_mut(&txid).expect("open").pending.as_mut().expect("pending").next += 1,
                Err(()) => return self.wait(txid, &key, need),
            }
        }
        Some(self.evaluate_pending(txid))
    }

    /// Takes `need` on `key` for `txid` now, or refuses (someone holds it, or a lock request
    /// waits on it: FIFO). A new lock is recorded in the transaction's locked keys.
    fn acquire(&mut self, txid: TxId, key: &[u8], need: Need) -> Result<(), ()> {
        let mode = match need {
            Need::CommittedRead => {
                return if self.prepared_exclusive_holder(txid, key).is_some() { Err(()) } else { Ok(()) };
            }
            Need::Lock(mode) => mode,
        };
        if self.locks.holds(key, txid, mode) {
            return Ok(());
        }
        // FIFO: behind any lock request already waiting that it conflicts with.
        if self.waits.has_lock_waiters(key) && !self.holders_of(txid, key, need).is_empty() {
            return Err(());
        }
        self.take_lock(txid, key, mode)
    }

    fn take_lock(&mut self, txid: TxId, key: &[u8], mode: LockMode) -> Result<(), ()> {
        match self.locks.try_lock(key, txid, mode) {
            Ok(true) => {
                self.open.get_mut(&txid).expect("open").locked.push(Slot::from_slice(key));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(_) => Err(()),
        }
    }

    /// Another transaction holding `key` exclusively that is not open here: prepared, so its
    /// decision is about to change the committed value.
    pub(super) fn prepared_exclusive_holder(&self, txid: TxId, key: &[u8]) -> Option<TxId> {
        self.locks.exclusive_holder(key).filter(|holder| *holder != txid && !self.open.contains_key(holder))
    }

    /// Queues the pending execute on `key` and reports what it waits for.
    fn wait(&mut self, txid: TxId, key: &[u8], need: Need) -> Option<Result<Vec<Read>, AbortReason>> {
        if !self.waits.push(key, txid, need) {
            self.rollback_open(txid);
            return Some(Err(AbortReason::ParticipantBusy { participant: self.id }));
        }
        let holders = self.holders_of(txid, key, need);
        assert!(!holders.is_empty(), "{txid} waits on {key:?} for nobody");
        let pending = self.open.get_mut(&txid).expect("open").pending.as_mut().expect("pending");
        pending.waiting = Some((Slot::from_slice(key), need, holders.clone()));
        self.events.push_back(RmEvent::Waits { waiter: txid, key: Bytes::copy_from_slice(key), holders });
        None
    }

    /// Whom `txid`, waiting on `key` for `need`, waits for: conflicting holders, then
    /// conflicting lock requests queued ahead of it (at most `WAIT_HOLDERS_MAX`).
    fn holders_of(&self, txid: TxId, key: &[u8], need: Need) -> Vec<TxId> {
        if need == Need::CommittedRead {
            return self.prepared_exclusive_holder(txid, key).into_iter().collect();
        }
        let mut holders = Vec::new();
        if let Some((mode, held_by)) = self.locks.holders(key) {
            let others = held_by.iter().copied().filter(|holder| *holder != txid);
            holders.extend(others.filter(|_| need.conflicts_with(Need::Lock(mode))));
        }
        for (waiting, queued) in self.waits.ahead_of(key, txid) {
            if need.conflicts_with(queued) && !holders.contains(&waiting) {
                holders.push(waiting);
            }
        }
        holders.truncate(WAIT_HOLDERS_MAX);
        holders
    }

    /// Every lock is held: runs the pending ops over the committed state and the buffered
    /// writes. A failure rolls the transaction back.
    fn evaluate_pending(&mut self, txid: TxId) -> Result<Vec<Read>, AbortReason> {
        let open = self.open.get_mut(&txid).expect("open");
        let pending = open.pending.take().expect("pending");
        let result = evaluate_open(&self.kv, self.id, open, &pending.ops);
        if result.is_err() {
            self.rollback_open(txid);
        }
        result
    }

    /// Drops the open transaction `txid`, its waiting request and its locks (their keys'
    /// queues are granted by the next `settle`).
    pub(super) fn rollback_open(&mut self, txid: TxId) {
        let Some(open) = self.open.remove(&txid) else { return };
        if let Some((key, _, _)) = open.pending.and_then(|pending| pending.waiting) {
            assert!(self.waits.remove(&key, txid), "{txid} waited without being queued");
            self.events.push_back(RmEvent::Waits {
                waiter: txid,
                key: Bytes::copy_from_slice(&key),
                holders: Vec::new(),
            });
            self.dirty.push(key);
        }
        self.unlock_all(txid, &open.locked);
    }

    /// Grants the queues of released keys until nothing more can be granted.
    pub(super) fn settle(&mut self) {
        while let Some(key) = self.dirty.pop() {
            self.grant(&key);
        }
    }

    /// Grants `key`'s queue: lock requests in arrival order until one is refused (FIFO),
    /// committed reads whenever no prepared holder remains. The granted resume; the others
    /// whose holders changed are reported again.
    fn grant(&mut self, key: &[u8]) {
        let mut granted = Vec::new();
        let mut lock_refused = false;
        for (txid, need) in self.waits.queue(key) {
            let taken = match need {
                Need::CommittedRead => self.prepared_exclusive_holder(txid, key).is_none(),
                Need::Lock(_) if lock_refused => false,
                Need::Lock(mode) => self.take_lock(txid, key, mode).is_ok(),
            };
            lock_refused |= !taken && matches!(need, Need::Lock(_));
            if taken {
                self.waits.remove(key, txid);
                granted.push(txid);
            }
        }
        for (txid, need) in self.waits.queue(key) {
            let holders = self.holders_of(txid, key, need);
            let pending = self.open.get_mut(&txid).expect("a waiter is open").pending.as_mut().expect("pending");
            let (_, _, reported) = pending.waiting.as_mut().expect("waiting");
            if *reported != holders {
                reported.clone_from(&holders);
                self.events.push_back(RmEvent::Waits { waiter: txid, key: Bytes::copy_from_slice(key), holders });
            }
        }
        for txid in granted {
            self.resume(txid, key);
        }
    }

    /// `txid`'s lock on `key` was granted: it stops waiting and goes on with its ops.
    fn resume(&mut self, txid: TxId, key: &[u8]) {
        let pending = self.open.get_mut(&txid).expect("a waiter is open").pending.as_mut().expect("pending");
        pending.waiting = None;
        pending.next += 1;
        self.events.push_back(RmEvent::Waits { waiter: txid, key: Bytes::copy_from_slice(key), holders: Vec::new() });
        if let Some(result) = self.advance(txid) {
            self.events.push_back(RmEvent::Executed { txid, result });
        }
    }
}

/// Runs `ops` for the open transaction: read-committed writes first check that the keys
/// they write still hold the committed values the transaction read (else `Conflict`).
fn evaluate_open(
    kv: &super::KvStore,
    participant: crate::types::ParticipantId,
    open: &mut OpenTx,
    ops: &[LocalOp],
) -> Result<Vec<Read>, AbortReason> {
    for op in ops.iter().filter(|op| op.kind.is_write()) {
        let read = open.read_values.iter().find(|(key, _)| key.as_slice() == op.key.as_ref());
        if let Some((_, value)) = read
            && kv.get(&op.key) != value.as_deref()
        {
            return Err(AbortReason::Conflict { participant, key: op.key.clone() });
        }
    }
    let mut reads = Vec::new();
    kv.evaluate_into(participant, ops, &mut reads, &mut open.writes)?;
    if open.isolation == Isolation::ReadCommitted {
        for (op, read) in ops.iter().filter(|op| !op.kind.is_write()).zip(&reads) {
            let own_write = open.writes.iter().any(|write| write.key == op.key);
            let known = open.read_values.iter().any(|(key, _)| key.as_slice() == op.key.as_ref());
            if !own_write && !known {
                open.read_values.push((Slot::from_slice(&op.key), read.value.clone()));
            }
        }
    }
    Ok(reads)
}
