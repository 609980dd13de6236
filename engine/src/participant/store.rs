//! The built-in resource manager: the key-value store and its lock table.

use super::KvImage;
use super::kv::{Evaluation, KvStore, Slot};
use super::locks::{LockMode, LockTable};
use super::resource::{Prepare, PrepareResult, ResourceManager};
use crate::ops::{Key, LocalOp};
use crate::record::Write;
use crate::types::{ParticipantId, TxId};

/// What a prepared transaction holds in the built-in store until its decision.
#[derive(Debug)]
pub struct KvPrepared {
    writes: Vec<Write>,
    /// Keys this transaction locked (released at the decision), copied: a slice would pin
    /// its whole network frame until then.
    locked: Vec<Slot>,
}

#[derive(Debug)]
pub struct KvResource {
    kv: KvStore,
    locks: LockTable,
}

impl KvResource {
    pub fn new(hash_seed: u64) -> KvResource {
        KvResource { kv: KvStore::new(hash_seed), locks: LockTable::new(hash_seed) }
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// Number of keys locked.
    pub fn locked_keys(&self) -> usize {
        self.locks.len()
    }

    /// Locks every key of `ops` (no-wait). On conflict nothing stays locked, and the
    /// holder and key are returned.
    fn lock_all(&mut self, txid: TxId, ops: &[LocalOp]) -> Result<Vec<Slot>, (TxId, Key)> {
        let mut locked = Vec::with_capacity(ops.len());
        for op in ops {
            let mode = if op.kind.is_write() { LockMode::Exclusive } else { LockMode::Shared };
            match self.locks.try_lock(&op.key, txid, mode) {
                Ok(true) => locked.push(Slot::from_slice(&op.key)),
                Ok(false) => {}
                Err(holder) => {
                    self.unlock_all(txid, &locked);
                    return Err((holder, op.key.clone()));
                }
            }
        }
        Ok(locked)
    }

    fn unlock_all(&mut self, txid: TxId, keys: &[Slot]) {
        for key in keys {
            self.locks.unlock(key, txid);
        }
    }
}

impl ResourceManager for KvResource {
    type Prepared = KvPrepared;

    fn prepare(&mut self, participant: ParticipantId, txid: TxId, ops: Vec<LocalOp>) -> Prepare<KvPrepared> {
        let locked = match self.lock_all(txid, &ops) {
            Ok(locked) => locked,
            Err((holder, key)) => return Prepare::Blocked { holder, key, ops },
        };
        let Evaluation { reads, writes } = match self.kv.evaluate(participant, &ops) {
            Ok(evaluation) => evaluation,
            Err(reason) => {
                self.unlock_all(txid, &locked);
                return Prepare::Done(PrepareResult::No { reason });
            }
        };
        if writes.is_empty() {
            self.unlock_all(txid, &locked);
            return Prepare::Done(PrepareResult::ReadOnly { reads });
        }
        Prepare::Done(PrepareResult::Yes { reads, prepared: KvPrepared { writes, locked } })
    }

    fn writes(prepared: &KvPrepared) -> &[Write] {
        &prepared.writes
    }

    fn commit(&mut self, txid: TxId, prepared: KvPrepared) {
        self.unlock_all(txid, &prepared.locked);
        self.kv.apply(&prepared.writes);
    }

    fn abort(&mut self, txid: TxId, prepared: KvPrepared) {
        self.unlock_all(txid, &prepared.locked);
    }

    fn recovered(&mut self, _txid: TxId, writes: Vec<Write>) -> KvPrepared {
        KvPrepared { writes, locked: Vec::new() }
    }

    fn relock(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        for write in &prepared.writes {
            let taken = self.locks.try_lock(&write.key, txid, LockMode::Exclusive);
            // Two prepared transactions never held conflicting locks, so neither can now.
            assert!(taken.is_ok(), "in-doubt {txid} conflicts with {taken:?} on recovery");
            if taken == Ok(true) {
                prepared.locked.push(Slot::from_slice(&write.key));
            }
        }
    }

    fn image(&self) -> KvImage {
        KvImage::from_pairs(self.kv.iter())
    }

    fn restore(&mut self, image: &KvImage) {
        for (key, value) in image.iter() {
            self.kv.put(&key, &value);
        }
    }

    #[cfg(test)]
    fn release_locks(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        let locked = std::mem::take(&mut prepared.locked);
        self.unlock_all(txid, &locked);
    }
}
