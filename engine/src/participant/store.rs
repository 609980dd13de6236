//! The built-in resource manager: the key-value store, its lock table, and the open
//! (interactive) transactions with their waiting lock requests (`open`).
//!
//! Invariants:
//! - One-shot prepares never wait: a conflict is answered at once (`Prepare::Blocked`).
//! - Optimistic open transactions hold no lock until their prepare, which never waits
//!   (`optimistic`).
//! - Open transactions' writes are buffered and reach the store only at commit, so the store
//!   holds committed values only.
//! - Every release of a key some request waits on is followed, before the call returns, by
//!   granting that key's queue in FIFO order (`settle`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::KvImage;
use super::kv::{Evaluation, KvStore, Slot, runs_no_sql};
use super::locks::{LockMode, LockTable};
use super::open::OpenTx;
use super::resource::{Execution, Prepare, PrepareResult, ResourceManager, RmEvent};
use super::waits::WaitQueues;
use crate::hash::SeededState;
use crate::ops::{Isolation, Key, LocalOp};
use crate::record::Write;
use crate::types::{ParticipantId, TxId};

/// What a prepared transaction holds in the built-in store until its decision.
///
/// Kept small (a shared slice and a vector, five words): a `Prepared` entry moves through
/// the transaction table on every prepare and decision, and each word more made those moves
/// `memcpy` calls (measured with callgrind: a third vector here cost the one-shot path ~7%
/// of its instructions).
#[derive(Debug)]
pub struct KvPrepared {
    /// Shared with the `Prepared` record that logs them: appending it copies nothing.
    pub(super) writes: Arc<[Write]>,
    /// Keys this transaction locked (released at the decision), copied: a slice would pin
    /// its whole network frame until then. The keys no write names are held shared (read):
    /// logged with the prepare so that a restart takes them again ([`shared_keys`]).
    ///
    /// Between `recovered` and `relock` (a restart's replay) nothing is locked yet and this
    /// holds the logged read keys, which `relock` takes again along with the writes' keys.
    pub(super) locked: Vec<Slot>,
}

/// The keys of `locked` that no write names: held shared. Every locked key of a transaction
/// that only writes is written, so that common case allocates nothing.
fn shared_keys(locked: &[Slot], writes: &[Write]) -> Vec<Slot> {
    if locked.len() == writes.len() {
        return Vec::new(); // Each write locks its key once: every lock is a write's.
    }
    locked.iter().filter(|key| !writes.iter().any(|write| write.key[..] == key[..])).cloned().collect()
}

/// Bounds of the built-in store's interactive transactions.
#[derive(Clone, Copy, Debug)]
pub struct KvLimits {
    /// Requests waiting on one key at most; one more fails with `ParticipantBusy`.
    pub waiters_per_key_max: usize,
    /// Operations one open transaction may run here in all its executes; beyond, it fails
    /// with `Invalid` (its buffered writes and read values are bounded by this).
    pub ops_per_open_max: usize,
}

impl Default for KvLimits {
    fn default() -> KvLimits {
        KvLimits { waiters_per_key_max: 1_024, ops_per_open_max: 4_096 }
    }
}

#[derive(Debug)]
pub struct KvResource {
    pub(super) id: ParticipantId,
    pub(super) kv: KvStore,
    pub(super) locks: LockTable,
    pub(super) limits: KvLimits,
    pub(super) open: HashMap<TxId, OpenTx, SeededState>,
    pub(super) waits: WaitQueues,
    /// Keys released while requests wait somewhere: their queues are granted by `settle`.
    pub(super) dirty: Vec<Slot>,
    pub(super) events: VecDeque<RmEvent>,
}

impl KvResource {
    pub fn new(id: ParticipantId, hash_seed: u64, limits: KvLimits) -> KvResource {
        KvResource {
            id,
            kv: KvStore::new(hash_seed),
            locks: LockTable::new(hash_seed),
            limits,
            open: HashMap::with_hasher(SeededState::new(hash_seed)),
            waits: WaitQueues::new(limits.waiters_per_key_max, hash_seed),
            dirty: Vec::new(),
            events: VecDeque::new(),
        }
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// Number of keys locked.
    pub fn locked_keys(&self) -> usize {
        self.locks.len()
    }

    /// Open (interactive, unprepared) transactions.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
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

    /// Releases `keys`; keys some request waits on are granted by the next `settle`.
    pub(super) fn unlock_all(&mut self, txid: TxId, keys: &[Slot]) {
        for key in keys {
            self.locks.unlock(key, txid);
            if !self.waits.is_empty() {
                self.dirty.push(key.clone());
            }
        }
    }
}

impl ResourceManager for KvResource {
    type Prepared = KvPrepared;

    fn prepare(&mut self, txid: TxId, ops: Vec<LocalOp>, sole: bool) -> Prepare<KvPrepared> {
        if ops.iter().any(|op| op.kind.is_sql()) {
            return Prepare::Done(PrepareResult::No { reason: runs_no_sql(self.id) });
        }
        let locked = match self.lock_all(txid, &ops) {
            Ok(locked) => locked,
            Err((holder, key)) => return Prepare::Blocked { holder, key, ops },
        };
        let Evaluation { reads, writes } = match self.kv.evaluate(self.id, &ops) {
            Ok(evaluation) => evaluation,
            Err(reason) => {
                self.unlock_all(txid, &locked);
                self.settle();
                return Prepare::Done(PrepareResult::No { reason });
            }
        };
        if writes.is_empty() && sole {
            self.unlock_all(txid, &locked);
            self.settle();
            return Prepare::Done(PrepareResult::ReadOnly { reads });
        }
        Prepare::Done(PrepareResult::Yes { reads, prepared: KvPrepared { writes: writes.into(), locked } })
    }

    fn execute(&mut self, txid: TxId, isolation: Isolation, ops: Vec<LocalOp>) -> Execution {
        if ops.iter().any(|op| op.kind.is_sql()) {
            // Refused before any lock is taken; whatever it ran before is rolled back here.
            self.rollback_open(txid);
            self.settle();
            return Execution::Failed { reason: runs_no_sql(self.id) };
        }
        let execution = self.execute_open(txid, isolation, ops);
        self.settle();
        execution
    }

    fn prepare_open(&mut self, txid: TxId, sole: bool) -> Option<PrepareResult<KvPrepared>> {
        let open = self.open.remove(&txid).expect("prepare of an open transaction");
        assert!(open.pending.is_none(), "{txid} prepared while its execute waits");
        if open.isolation == Isolation::Optimistic {
            return Some(self.prepare_optimistic(txid, open, sole));
        }
        if open.writes.is_empty() && sole {
            self.unlock_all(txid, &open.locked);
            self.settle();
            return Some(PrepareResult::ReadOnly { reads: Vec::new() });
        }
        Some(PrepareResult::Yes {
            reads: Vec::new(),
            prepared: KvPrepared { writes: open.writes.into(), locked: open.locked },
        })
    }

    fn rollback(&mut self, txid: TxId) {
        self.rollback_open(txid);
        self.settle();
    }

    fn pop_event(&mut self) -> Option<RmEvent> {
        self.events.pop_front()
    }

    #[inline]
    fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn writes(prepared: &KvPrepared) -> Arc<[Write]> {
        Arc::clone(&prepared.writes)
    }

    #[inline]
    fn read_keys(prepared: &KvPrepared) -> Vec<Key> {
        if prepared.locked.len() == prepared.writes.len() {
            return Vec::new(); // Only writes (asked at every prepare): see `shared_keys`.
        }
        shared_keys(&prepared.locked, &prepared.writes).iter().map(|key| Key::copy_from_slice(key)).collect()
    }

    fn commit(&mut self, txid: TxId, prepared: KvPrepared) {
        self.unlock_all(txid, &prepared.locked);
        self.kv.apply(&prepared.writes);
        self.settle();
    }

    fn abort(&mut self, txid: TxId, prepared: KvPrepared) {
        self.unlock_all(txid, &prepared.locked);
        self.settle();
    }

    fn recovered(&mut self, _txid: TxId, writes: Arc<[Write]>, read_keys: Vec<Key>) -> KvPrepared {
        // Nothing is locked during replay: `locked` carries the read keys until `relock`.
        let read_keys = read_keys.iter().map(|key| Slot::from_slice(key)).collect();
        KvPrepared { writes, locked: read_keys }
    }

    fn relock(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        let read_keys = std::mem::take(&mut prepared.locked);
        let exclusive = prepared.writes.iter().map(|write| (&write.key[..], LockMode::Exclusive));
        let shared = read_keys.iter().map(|key| (&key[..], LockMode::Shared));
        for (key, mode) in exclusive.chain(shared) {
            let taken = self.locks.try_lock(key, txid, mode);
            // Two prepared transactions never held conflicting locks, so neither can now.
            assert!(taken.is_ok(), "in-doubt {txid} conflicts with {taken:?} on recovery");
            if taken == Ok(true) {
                prepared.locked.push(Slot::from_slice(key));
            }
        }
    }

    fn image(&self) -> KvImage {
        KvImage::from_entries(self.kv.commits(), self.kv.entries())
    }

    fn restore(&mut self, image: &KvImage) {
        self.kv.restore_commits(image.commits());
        for (key, value, version) in image.entries() {
            self.kv.restore_entry(&key, &value, version);
        }
    }

    #[cfg(test)]
    fn release_locks(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        let locked = std::mem::take(&mut prepared.locked);
        self.unlock_all(txid, &locked);
        self.settle();
    }

    #[cfg(test)]
    fn release_read_locks(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        let read_keys = shared_keys(&prepared.locked, &prepared.writes);
        prepared.locked.retain(|key| !read_keys.contains(key));
        self.unlock_all(txid, &read_keys);
        self.settle();
    }
}
