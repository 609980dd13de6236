//! Per-key FIFO queues of interactive lock requests waiting for a lock (strict two-phase
//! locking with waiting locks). The lock table itself stays no-wait; the built-in resource
//! manager puts a request here when it is refused and retries the queue's front when the
//! key is released.
//!
//! Invariants:
//! - A transaction waits in at most one queue at a time (one pending request each).
//! - At most `per_key_max` requests wait on one key; the total is bounded by the number of
//!   open transactions (one request each).

use std::collections::{HashMap, VecDeque};

use super::kv::Slot;
use super::locks::LockMode;
use crate::hash::SeededState;
use crate::types::TxId;

/// What a waiting request needs on its key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Need {
    Lock(LockMode),
    /// A read-committed read: no lock, only that no prepared transaction holds the key
    /// exclusively (its decision is pending: the committed value is about to change).
    CommittedRead,
}

impl Need {
    /// Whether a request needing `self` must wait behind one needing `other`.
    pub(super) fn conflicts_with(self, other: Need) -> bool {
        match (self, other) {
            (Need::Lock(a), Need::Lock(b)) => a == LockMode::Exclusive || b == LockMode::Exclusive,
            _ => false, // A committed read neither waits behind nor blocks queued requests.
        }
    }
}

#[derive(Debug)]
pub(super) struct WaitQueues {
    queues: HashMap<Slot, VecDeque<(TxId, Need)>, SeededState>,
    per_key_max: usize,
}

impl WaitQueues {
    pub(super) fn new(per_key_max: usize, hash_seed: u64) -> WaitQueues {
        WaitQueues { queues: HashMap::with_hasher(SeededState::new(hash_seed)), per_key_max }
    }

    /// No request waits anywhere: checked on every release, before hashing.
    pub(super) fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Whether a lock request waits on `key` (a new one must queue behind it: FIFO).
    pub(super) fn has_lock_waiters(&self, key: &[u8]) -> bool {
        !self.queues.is_empty()
            && self.queues.get(key).is_some_and(|queue| queue.iter().any(|(_, need)| matches!(need, Need::Lock(_))))
    }

    /// Whether a lock request waiting on `key` conflicts with `mode` (a request for `mode`
    /// that does not wait must not overtake it).
    pub(super) fn has_lock_waiter_conflicting(&self, key: &[u8], mode: LockMode) -> bool {
        let need = Need::Lock(mode);
        !self.queues.is_empty()
            && self.queues.get(key).is_some_and(|queue| queue.iter().any(|(_, queued)| need.conflicts_with(*queued)))
    }

    /// Queues `txid` at the back of `key`'s queue; false if that queue is full.
    pub(super) fn push(&mut self, key: &[u8], txid: TxId, need: Need) -> bool {
        let queue = self.queues.entry(Slot::from_slice(key)).or_default();
        if queue.len() >= self.per_key_max {
            if queue.is_empty() {
                self.queues.remove(key);
            }
            return false;
        }
        assert!(queue.iter().all(|(waiting, _)| *waiting != txid), "{txid} queued twice on one key");
        queue.push_back((txid, need));
        true
    }

    /// Removes `txid` from `key`'s queue (its transaction ended); false if it was not there.
    pub(super) fn remove(&mut self, key: &[u8], txid: TxId) -> bool {
        let Some(queue) = self.queues.get_mut(key) else { return false };
        let before = queue.len();
        queue.retain(|(waiting, _)| *waiting != txid);
        let removed = queue.len() < before;
        if queue.is_empty() {
            self.queues.remove(key);
        }
        removed
    }

    /// The requests waiting on `key`, in arrival order.
    pub(super) fn queue(&self, key: &[u8]) -> Vec<(TxId, Need)> {
        self.queues.get(key).map(|queue| queue.iter().copied().collect()).unwrap_or_default()
    }

    /// The requests queued on `key` ahead of `txid`.
    pub(super) fn ahead_of(&self, key: &[u8], txid: TxId) -> impl Iterator<Item = (TxId, Need)> + '_ {
        self.queues
            .get(key)
            .into_iter()
            .flat_map(move |queue| queue.iter().copied().take_while(move |(waiting, _)| *waiting != txid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_fifo_bounded_per_key_and_vanish_when_empty() {
        let mut waits = WaitQueues::new(2, 0);
        let (a, b, c) = (TxId(1), TxId(2), TxId(3));
        assert!(waits.push(b"k", a, Need::Lock(LockMode::Exclusive)));
        assert!(waits.push(b"k", b, Need::CommittedRead));
        assert!(!waits.push(b"k", c, Need::Lock(LockMode::Shared)), "full");
        assert_eq!(waits.ahead_of(b"k", b).collect::<Vec<_>>(), vec![(a, Need::Lock(LockMode::Exclusive))]);
        assert!(waits.has_lock_waiters(b"k"));
        assert!(waits.has_lock_waiter_conflicting(b"k", LockMode::Shared), "behind a queued exclusive request");
        assert!(!waits.has_lock_waiter_conflicting(b"other", LockMode::Exclusive));
        assert!(waits.remove(b"k", a));
        assert!(!waits.has_lock_waiter_conflicting(b"k", LockMode::Exclusive), "a committed read blocks nothing");
        assert!(!waits.has_lock_waiters(b"k"), "a committed read is not a lock request");
        assert!(!waits.remove(b"k", a));
        assert!(waits.remove(b"k", b));
        assert!(waits.is_empty());
    }

    #[test]
    fn exclusive_requests_conflict_shared_ones_do_not_and_reads_never_do() {
        let (shared, exclusive) = (Need::Lock(LockMode::Shared), Need::Lock(LockMode::Exclusive));
        assert!(!shared.conflicts_with(shared));
        assert!(shared.conflicts_with(exclusive) && exclusive.conflicts_with(shared));
        assert!(!Need::CommittedRead.conflicts_with(exclusive) && !exclusive.conflicts_with(Need::CommittedRead));
    }
}
