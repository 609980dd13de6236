//! Prepares waiting for the decision of an older prepared transaction that holds one of
//! their keys.
//!
//! Why: the coordinator tells a client `Committed` before it sends `Commit` to the
//! participants (see the coordinator's parallel commit), so a client's next transaction
//! on the same keys can reach a participant while the committed one still holds them.
//! Refusing it (no-wait locking) would abort a transaction for conflicting with its own
//! client's acknowledged past; it waits for that decision instead.
//!
//! Invariants:
//! - A prepare waits only for a holder with a lower transaction id, so waits always point
//!   from younger to older and can never form a cycle, across participants too (ids are
//!   global).
//! - A waiting prepare holds no lock and has not voted; the coordinator's prepare timeout
//!   bounds how long it waits (its `Abort` removes it here).
//! - At most `max` prepares wait in total.

use std::collections::HashMap;

use crate::hash::SeededState;
use crate::ops::LocalOp;
use crate::types::{Epoch, TxId};

/// A waiting prepare: its transaction, ops and `sole` flag (as in `ToParticipant::Prepare`).
pub(super) type Waiting = (TxId, Vec<LocalOp>, bool);

#[derive(Debug)]
pub(super) struct Parked {
    /// Waiting prepares per holder, in arrival order.
    by_holder: HashMap<TxId, Vec<Waiting>, SeededState>,
    /// The holder each waiting prepare waits for.
    holder_of: HashMap<TxId, TxId, SeededState>,
    max: usize,
}

impl Parked {
    pub(super) fn new(max: usize, hash_seed: u64) -> Parked {
        Parked {
            by_holder: HashMap::with_hasher(SeededState::new(hash_seed)),
            holder_of: HashMap::with_hasher(SeededState::new(hash_seed)),
            max,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.holder_of.len()
    }

    /// Asked for every prepare: nearly always empty, so that is checked before hashing.
    pub(super) fn contains(&self, txid: TxId) -> bool {
        !self.holder_of.is_empty() && self.holder_of.contains_key(&txid)
    }

    /// Whether `txid` may wait for `holder`: younger than it, and room left.
    pub(super) fn may_wait(&self, txid: TxId, holder: TxId) -> bool {
        txid > holder && self.len() < self.max
    }

    pub(super) fn park(&mut self, holder: TxId, txid: TxId, ops: Vec<LocalOp>, sole: bool) {
        assert!(self.may_wait(txid, holder), "{txid} may not wait for {holder}");
        let previous = self.holder_of.insert(txid, holder);
        assert!(previous.is_none(), "{txid} waits twice");
        self.by_holder.entry(holder).or_default().push((txid, ops, sole));
    }

    /// The prepares that waited for `holder`, now decided, in arrival order.
    pub(super) fn take_waiters(&mut self, holder: TxId) -> Vec<Waiting> {
        let waiters = self.by_holder.remove(&holder).unwrap_or_default();
        for (txid, _, _) in &waiters {
            self.holder_of.remove(txid);
        }
        waiters
    }

    /// Forgets a waiting prepare (its transaction was aborted); false if it was not waiting.
    pub(super) fn remove(&mut self, txid: TxId) -> bool {
        let Some(holder) = self.holder_of.remove(&txid) else { return false };
        let waiters = self.by_holder.get_mut(&holder).expect("indexed");
        waiters.retain(|(waiting, _, _)| *waiting != txid);
        if waiters.is_empty() {
            self.by_holder.remove(&holder);
        }
        true
    }

    /// Forgets every waiting prepare of a coordinator epoch before `epoch` and returns them,
    /// sorted: a restarted coordinator will never decide them.
    pub(super) fn remove_older_than(&mut self, epoch: Epoch) -> Vec<TxId> {
        let mut older: Vec<TxId> = self.holder_of.keys().copied().filter(|txid| txid.epoch() < epoch).collect();
        older.sort_unstable();
        for &txid in &older {
            self.remove(txid);
        }
        older
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(epoch: u32, counter: u64) -> TxId {
        TxId::new(Epoch(epoch), counter)
    }

    #[test]
    fn only_younger_prepares_wait_and_the_total_is_bounded() {
        let mut parked = Parked::new(2, 0);
        assert!(!parked.may_wait(t(1, 1), t(1, 2)), "older never waits for younger: no cycles");
        assert!(!parked.may_wait(t(1, 2), t(1, 2)));
        parked.park(t(1, 1), t(1, 2), Vec::new(), true);
        parked.park(t(1, 1), t(1, 3), Vec::new(), true);
        assert!(!parked.may_wait(t(1, 4), t(1, 1)), "full");
        let woken: Vec<TxId> = parked.take_waiters(t(1, 1)).into_iter().map(|(txid, _, _)| txid).collect();
        assert_eq!(woken, vec![t(1, 2), t(1, 3)], "in arrival order");
        assert_eq!(parked.len(), 0);
        assert!(parked.take_waiters(t(1, 1)).is_empty());
    }

    #[test]
    fn aborted_and_stale_waiters_are_forgotten() {
        let mut parked = Parked::new(10, 0);
        parked.park(t(1, 1), t(1, 2), Vec::new(), true);
        parked.park(t(1, 1), t(2, 1), Vec::new(), true);
        parked.park(t(1, 5), t(1, 6), Vec::new(), true);
        assert!(parked.remove(t(1, 2)));
        assert!(!parked.remove(t(1, 2)), "already gone");
        assert_eq!(parked.remove_older_than(Epoch(2)), vec![t(1, 6)]);
        assert!(parked.contains(t(2, 1)) && parked.len() == 1);
        assert!(parked.take_waiters(t(1, 5)).is_empty(), "an emptied holder entry is gone");
    }
}
