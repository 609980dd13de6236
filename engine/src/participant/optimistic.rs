//! Optimistic transactions in the built-in store: executes take no lock and never wait,
//! reads record the version they saw (see `kv`: the commit that last wrote the key), writes
//! are buffered in the open transaction. At prepare the transaction takes its locks without
//! waiting and validates its reads; any conflict aborts it with `Conflict` (retryable).
//!
//! What is validated when:
//! - Execute: a key read again must still have the version first read (else `Conflict` at
//!   once: the transaction could only fail validation, and its reads stay consistent).
//! - Prepare: exclusive locks on the keys written, then for every key read: its version is
//!   the one read, and a shared lock is taken on it (held until the decision), so the
//!   transaction is serialized at its prepare like a two-phase-locking one: no lost update,
//!   no write skew. A lock held by anyone else, or a lock request queued on the key that
//!   it conflicts with (queues are FIFO), is a conflict: optimistic never waits and never
//!   reports a wait.
//! - A read-only transaction at its sole participant validates and releases at once (no
//!   decision to wait for): its versions must be current and no prepared transaction may
//!   hold a read key for writing (its decision may already be Commit, and its client told).
//!
//! Invariants: an optimistic open transaction holds no lock and never waits; a failed
//! validation leaves nothing held.

use super::kv::Slot;
use super::locks::LockMode;
use super::open::OpenTx;
use super::resource::PrepareResult;
use super::store::{KvPrepared, KvResource};
use crate::ops::{AbortReason, LocalOp, OpKind, Read};
use crate::types::{ParticipantId, TxId};

impl KvResource {
    /// Runs `ops` in the optimistic open transaction `txid` over the committed state and its
    /// buffered writes, recording the versions read. A failure rolls the transaction back.
    pub(super) fn execute_optimistic(&mut self, txid: TxId, ops: &[LocalOp]) -> Result<Vec<Read>, AbortReason> {
        let open = self.open.get_mut(&txid).expect("open");
        let mut reads = Vec::new();
        let result = record_read_versions(&self.kv, self.id, open, ops)
            .and_then(|()| self.kv.evaluate_into(self.id, ops, &mut reads, &mut open.writes));
        match result {
            Ok(()) => Ok(reads),
            Err(reason) => {
                self.rollback_open(txid);
                Err(reason)
            }
        }
    }

    /// Prepares the optimistic transaction `open` (no longer open): takes its locks without
    /// waiting and validates its reads. Read-only at its sole participant: validated and
    /// nothing kept.
    pub(super) fn prepare_optimistic(&mut self, txid: TxId, open: OpenTx, sole: bool) -> PrepareResult<KvPrepared> {
        assert!(open.locked.is_empty(), "optimistic {txid} locked while open");
        if open.writes.is_empty() && sole {
            return match self.validate_unlocked(txid, &open.read_versions) {
                Ok(()) => PrepareResult::ReadOnly { reads: Vec::new() },
                Err(reason) => PrepareResult::No { reason },
            };
        }
        let mut locked = Vec::with_capacity(open.writes.len() + open.read_versions.len());
        match self.lock_and_validate(txid, &open, &mut locked) {
            Ok(()) => {
                PrepareResult::Yes { reads: Vec::new(), prepared: KvPrepared { writes: open.writes.into(), locked } }
            }
            Err(reason) => {
                self.unlock_all(txid, &locked);
                self.settle();
                PrepareResult::No { reason }
            }
        }
    }

    /// Exclusive locks on the keys written, then shared locks on the keys read and their
    /// versions checked; every lock taken is pushed to `locked` (released by the caller on
    /// an error).
    fn lock_and_validate(&mut self, txid: TxId, open: &OpenTx, locked: &mut Vec<Slot>) -> Result<(), AbortReason> {
        for write in &open.writes {
            self.lock_now(txid, &write.key, LockMode::Exclusive, locked)?;
        }
        for (key, version) in &open.read_versions {
            self.lock_now(txid, key, LockMode::Shared, locked)?;
            self.check_version(key, *version)?;
        }
        Ok(())
    }

    /// Takes `mode` on `key` for `txid` at once, or fails with `Conflict`: someone holds a
    /// conflicting lock, or a conflicting lock request waits on it (it is not overtaken).
    fn lock_now(&mut self, txid: TxId, key: &[u8], mode: LockMode, locked: &mut Vec<Slot>) -> Result<(), AbortReason> {
        if self.locks.holds(key, txid, mode) {
            return Ok(());
        }
        if self.waits.has_lock_waiter_conflicting(key, mode) {
            return Err(self.conflict(key));
        }
        match self.locks.try_lock(key, txid, mode) {
            Ok(true) => {
                locked.push(Slot::from_slice(key));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(_) => Err(self.conflict(key)),
        }
    }

    /// A read-only sole transaction's validation: every version read is current, and no
    /// prepared transaction holds a read key for writing.
    fn validate_unlocked(&self, txid: TxId, read_versions: &[(Slot, u64)]) -> Result<(), AbortReason> {
        for (key, version) in read_versions {
            if self.prepared_exclusive_holder(txid, key).is_some() {
                return Err(self.conflict(key));
            }
            self.check_version(key, *version)?;
        }
        Ok(())
    }

    fn check_version(&self, key: &[u8], version_read: u64) -> Result<(), AbortReason> {
        if self.kv.version(key) == version_read { Ok(()) } else { Err(self.conflict(key)) }
    }

    fn conflict(&self, key: &[u8]) -> AbortReason {
        conflict(self.id, key)
    }
}

fn conflict(participant: ParticipantId, key: &[u8]) -> AbortReason {
    AbortReason::Conflict { participant, key: bytes::Bytes::copy_from_slice(key) }
}

/// Records the committed version of each key `ops` read (`Get`, and `Add`, which reads the
/// value it adds to) that the transaction has not written itself; a key read before must
/// still have the version first read.
fn record_read_versions(
    kv: &super::KvStore,
    participant: ParticipantId,
    open: &mut OpenTx,
    ops: &[LocalOp],
) -> Result<(), AbortReason> {
    for (position, op) in ops.iter().enumerate() {
        if !matches!(op.kind, OpKind::Get | OpKind::Add { .. }) {
            continue; // A blind write depends on no earlier value.
        }
        let written_before = open.writes.iter().any(|write| write.key == op.key)
            || ops[..position].iter().any(|earlier| earlier.kind.is_write() && earlier.key == op.key);
        if written_before {
            continue; // Reads its own write, not the committed state.
        }
        let version = kv.version(&op.key);
        match open.read_versions.iter().find(|(key, _)| key.as_slice() == op.key.as_ref()) {
            Some((_, first)) if *first != version => return Err(conflict(participant, &op.key)),
            Some(_) => {}
            None => open.read_versions.push((Slot::from_slice(&op.key), version)),
        }
    }
    Ok(())
}
