//! Transactions in flight by txid, laid out in txid order: the coordinator's, and each
//! participant's prepared ones.
//!
//! Txids of one epoch are consecutive, and the messages that arrive together (votes, acks,
//! commits) are for transactions started together. A hash table scatters those neighbours
//! over the whole table (one cache miss per message: the hottest instructions of both
//! engines at 100 k tx/s); here they sit side by side in a window of slots indexed by
//! `txid - base`. A transaction still live when the window would pass
//! [`WINDOW_SLOTS_MAX`] slots (a commit waiting for a dead participant), and any txid below
//! the window (recovered transactions of earlier epochs), moves to a side hash map, so the
//! window stays bounded whatever one transaction does. (A participant sees only the txids
//! that touch it: with many participants its window is sparse and more entries end up in
//! the side map; still correct, only less local.)
//!
//! Invariants: a txid is in the window or in `stragglers`, never both; the window's first
//! slot, when there is one, is occupied and it has at most [`WINDOW_SLOTS_MAX`] slots;
//! `len` counts the entries of both.

use std::collections::{HashMap, VecDeque};

use crate::hash::SeededState;
use crate::types::TxId;

/// Bound on the window's slots (occupied or not).
pub const WINDOW_SLOTS_MAX: usize = 1 << 16;

#[derive(Debug)]
pub struct TxTable<T> {
    window: VecDeque<Option<T>>,
    /// The txid of the window's first slot.
    base: u64,
    stragglers: HashMap<TxId, T, SeededState>,
    len: usize,
}

impl<T> TxTable<T> {
    pub fn new(hash_seed: u64) -> TxTable<T> {
        TxTable {
            window: VecDeque::new(),
            base: 0,
            stragglers: HashMap::with_hasher(SeededState::new(hash_seed)),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` for `txid`; returns what was stored for it before.
    pub fn insert(&mut self, txid: TxId, value: T) -> Option<T> {
        if !self.stragglers.is_empty()
            && let Some(slot) = self.stragglers.get_mut(&txid)
        {
            return Some(std::mem::replace(slot, value));
        }
        if self.window.is_empty() {
            self.base = txid.0;
        }
        if txid.0 < self.base {
            let old = self.stragglers.insert(txid, value);
            self.len += usize::from(old.is_none());
            return old;
        }
        let index = usize::try_from(txid.0 - self.base).unwrap_or(usize::MAX);
        if index >= self.window.len() + WINDOW_SLOTS_MAX {
            // A jump far ahead (a new epoch): everything in the window is older.
            self.evict_window();
            self.base = txid.0;
            return self.insert(txid, value);
        }
        while self.window.len() <= index {
            self.window.push_back(None);
        }
        let old = self.window[index].replace(value);
        self.len += usize::from(old.is_none());
        self.bound_window();
        self.check();
        old
    }

    pub fn get(&self, txid: TxId) -> Option<&T> {
        match self.occupied_slot(txid) {
            Some(index) => self.window[index].as_ref(),
            None => self.stragglers.get(&txid),
        }
    }

    pub fn get_mut(&mut self, txid: TxId) -> Option<&mut T> {
        match self.occupied_slot(txid) {
            Some(index) => self.window[index].as_mut(),
            None => self.stragglers.get_mut(&txid),
        }
    }

    pub fn remove(&mut self, txid: TxId) -> Option<T> {
        let removed = match self.occupied_slot(txid) {
            Some(index) => {
                let removed = self.window[index].take();
                self.trim_front();
                removed
            }
            None => self.stragglers.remove(&txid),
        };
        self.len -= usize::from(removed.is_some());
        self.check();
        removed
    }

    pub fn keys(&self) -> impl Iterator<Item = TxId> + '_ {
        self.iter().map(|(txid, _)| txid)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.iter().map(|(_, value)| value)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (TxId, &T)> {
        let base = self.base;
        let window = self
            .window
            .iter()
            .enumerate()
            .filter_map(move |(i, slot)| slot.as_ref().map(|v| (TxId(base + i as u64), v)));
        window.chain(self.stragglers.iter().map(|(txid, v)| (*txid, v)))
    }

    /// The window slot holding `txid`, if it is there (a straggler may fall in the window's
    /// range after the window restarted lower; its slot is empty then).
    fn occupied_slot(&self, txid: TxId) -> Option<usize> {
        let offset = txid.0.checked_sub(self.base)?;
        usize::try_from(offset).ok().filter(|&index| self.window.get(index).is_some_and(Option::is_some))
    }

    /// Moves the oldest slots out while the window is over its bound.
    fn bound_window(&mut self) {
        while self.window.len() > WINDOW_SLOTS_MAX {
            self.pop_front_to_stragglers();
        }
        self.trim_front();
    }

    fn evict_window(&mut self) {
        while !self.window.is_empty() {
            self.pop_front_to_stragglers();
        }
    }

    fn pop_front_to_stragglers(&mut self) {
        if let Some(Some(value)) = self.window.pop_front() {
            self.stragglers.insert(TxId(self.base), value);
        }
        self.base += 1;
    }

    /// Drops empty slots at the front, so that the window starts at its oldest entry.
    fn trim_front(&mut self) {
        while let Some(None) = self.window.front() {
            self.window.pop_front();
            self.base += 1;
        }
    }

    /// The invariants that cost O(1) to check.
    fn check(&self) {
        debug_assert!(self.window.len() <= WINDOW_SLOTS_MAX);
        debug_assert!(self.window.front().is_none_or(Option::is_some), "the window starts at an entry");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn neighbours_share_the_window_and_a_straggler_leaves_it() {
        let mut table = TxTable::new(0);
        table.insert(TxId(100), "old");
        for txid in 101..101 + WINDOW_SLOTS_MAX as u64 {
            table.insert(TxId(txid), "new");
            table.remove(TxId(txid));
        }
        assert_eq!(table.window.len(), 0, "the straggler moved out and the window emptied");
        assert_eq!(table.stragglers.len(), 1);
        assert_eq!(table.get(TxId(100)), Some(&"old"));
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove(TxId(100)), Some("old"));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_new_epoch_jumps_the_window_forward() {
        let mut table = TxTable::new(0);
        table.insert(TxId(5), 1);
        table.insert(TxId(7), 2);
        let next_epoch = TxId(2 << 40);
        table.insert(next_epoch, 3);
        assert_eq!((table.get(TxId(5)), table.get(TxId(7)), table.get(next_epoch)), (Some(&1), Some(&2), Some(&3)));
        assert_eq!(table.window.len(), 1, "only the new epoch's txid is in the window");
        let mut all: Vec<(TxId, i32)> = table.iter().map(|(txid, v)| (txid, *v)).collect();
        all.sort();
        assert_eq!(all, vec![(TxId(5), 1), (TxId(7), 2), (next_epoch, 3)]);
    }

    proptest! {
        /// Any mix of inserts and removes gives what a map gives.
        #[test]
        fn behaves_as_a_map(ops in prop::collection::vec((any::<bool>(), 0u64..3, 0u64..300), 1..400)) {
            let mut table = TxTable::new(0);
            let mut model = BTreeMap::new();
            for (insert, epoch, counter) in ops {
                // Mostly increasing txids within a few epochs, as a coordinator makes them.
                let txid = TxId((epoch << 40) | counter);
                if insert {
                    prop_assert_eq!(table.insert(txid, counter), model.insert(txid, counter));
                } else {
                    prop_assert_eq!(table.remove(txid), model.remove(&txid));
                }
                prop_assert_eq!(table.len(), model.len());
                let in_window = table.window.iter().flatten().count();
                prop_assert_eq!(in_window + table.stragglers.len(), table.len());
            }
            for (txid, value) in &model {
                prop_assert_eq!(table.get(*txid), Some(value));
            }
            let mut all: Vec<(TxId, u64)> = table.iter().map(|(txid, v)| (txid, *v)).collect();
            all.sort();
            prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        }
    }
}
