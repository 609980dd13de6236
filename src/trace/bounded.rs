//! A map with a fixed capacity that drops its oldest entry to make room, and answers "not
//! here" for most absent keys without hashing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use twophase_engine::hash::SeededState;
use twophase_engine::{ClientId, Seq, TxId};

/// Counters of the presence filter (a power of two): 8 KiB of `u16`, so the filter stays
/// in cache; with a few hundred traced transactions in flight most buckets are empty.
const FILTER_BUCKETS: usize = 4096;

/// A cheap, well-spread number for a key: the filter's bucket is its low bits. Keys that
/// are counters (txids, seqs) spread by themselves.
pub(crate) trait Fingerprint {
    fn fingerprint(&self) -> u64;
}

impl Fingerprint for TxId {
    #[inline]
    fn fingerprint(&self) -> u64 {
        self.0
    }
}

impl Fingerprint for (ClientId, Seq) {
    #[inline]
    fn fingerprint(&self) -> u64 {
        self.1 ^ self.0.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// Insertion-ordered eviction: when full, inserting drops the oldest entry still present
/// (and returns it, so its spans can be ended). Removing is by key; the order queue is
/// compacted once stale keys make it twice the capacity. Hashed with the engine's fast
/// seeded hasher (keys come from the wire: the seed is random, so no one can aim collisions).
///
/// Why the filter: the runtime asks about every transaction (each vote, ack, record and
/// reply), and at a 1% sampling rate nearly every answer is "not traced". A counting filter
/// (entries per bucket of the key's fingerprint) answers most of those with one load, and
/// only a key whose bucket is occupied is looked up in the map.
pub(crate) struct BoundedMap<K, V> {
    map: HashMap<K, V, SeededState>,
    order: VecDeque<K>,
    capacity: usize,
    /// Entries of `map` per fingerprint bucket.
    filter: Box<[u16]>,
}

impl<K: Copy + Eq + Hash + Fingerprint, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> BoundedMap<K, V> {
        assert!(capacity > 0, "a bounded map needs room for one entry");
        assert!(capacity <= usize::from(u16::MAX), "a filter bucket counts at most u16::MAX entries");
        let hasher = SeededState::new(rand::random());
        let filter = vec![0; FILTER_BUCKETS].into_boxed_slice();
        BoundedMap { map: HashMap::with_hasher(hasher), order: VecDeque::new(), capacity, filter }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[inline]
    fn bucket(key: &K) -> usize {
        key.fingerprint() as usize & (FILTER_BUCKETS - 1)
    }

    /// False means `key` is absent (an empty map, or a miss in the presence filter: no
    /// hashing); true means look it up.
    #[inline]
    pub(crate) fn may_hold(&self, key: &K) -> bool {
        !self.is_empty() && self.may_contain(key)
    }

    /// False means absent; true means look it up.
    #[inline]
    fn may_contain(&self, key: &K) -> bool {
        self.filter[Self::bucket(key)] != 0
    }

    /// Inlined into the hooks, so that the usual miss is a load and a branch there; the
    /// lookup itself stays out of line.
    #[inline]
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.may_contain(key) {
            return None;
        }
        self.lookup(key)
    }

    #[inline(never)]
    fn lookup(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// Inlined like [`get_mut`](Self::get_mut).
    #[inline]
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        if !self.may_contain(key) {
            return None;
        }
        self.remove_present(key)
    }

    #[inline(never)]
    fn remove_present(&mut self, key: &K) -> Option<V> {
        let removed = self.map.remove(key)?;
        self.uncount(key);
        Some(removed)
    }

    fn uncount(&mut self, key: &K) {
        let count = &mut self.filter[Self::bucket(key)];
        assert!(*count > 0, "the presence filter lost count of an entry");
        *count -= 1;
    }

    /// Inserts (or replaces) `key`; returns the entry evicted to make room, if any.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        if let Some(old) = self.map.get_mut(&key) {
            *old = value;
            return None;
        }
        let evicted = if self.map.len() >= self.capacity { self.evict_oldest() } else { None };
        self.map.insert(key, value);
        self.filter[Self::bucket(&key)] += 1;
        self.order.push_back(key);
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order.retain(|key| map.contains_key(key));
        }
        evicted
    }

    fn evict_oldest(&mut self) -> Option<(K, V)> {
        while let Some(key) = self.order.pop_front() {
            if let Some(value) = self.map.remove(&key) {
                self.uncount(&key);
                return Some((key, value));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_total<K, V>(map: &BoundedMap<K, V>) -> usize {
        map.filter.iter().map(|&count| usize::from(count)).sum()
    }

    #[test]
    fn the_oldest_present_entry_makes_room() {
        let mut map = BoundedMap::new(2);
        assert!(map.insert(TxId(1), "a").is_none());
        assert!(map.insert(TxId(2), "b").is_none());
        assert_eq!(map.remove(&TxId(1)), Some("a"));
        assert!(map.insert(TxId(3), "c").is_none(), "room was made by the removal");
        assert_eq!(map.insert(TxId(4), "d"), Some((TxId(2), "b")));
        assert_eq!(map.map.len(), 2);
        assert_eq!(filter_total(&map), 2, "the evicted entry left the filter");
        assert!(map.get_mut(&TxId(3)).is_some() && map.get_mut(&TxId(4)).is_some());
        assert!(map.get_mut(&TxId(2)).is_none());
        assert!(map.may_hold(&TxId(3)) && !map.may_hold(&TxId(2)), "the evicted key's bucket is empty again");
    }

    #[test]
    fn churn_without_eviction_keeps_the_order_queue_bounded() {
        let mut map = BoundedMap::new(4);
        for key in 0..10_000u64 {
            map.insert(TxId(key), ());
            map.remove(&TxId(key));
            assert!(map.order.len() <= 8);
        }
        assert!(map.is_empty());
        assert_eq!(filter_total(&map), 0);
    }

    #[test]
    fn replacing_a_key_keeps_one_entry() {
        let mut map = BoundedMap::new(1);
        map.insert(TxId(7), 1);
        assert!(map.insert(TxId(7), 2).is_none());
        assert_eq!(filter_total(&map), 1);
        assert_eq!(map.remove(&TxId(7)), Some(2));
        assert_eq!(filter_total(&map), 0);
    }

    #[test]
    fn keys_sharing_a_filter_bucket_are_still_told_apart() {
        let mut map = BoundedMap::new(8);
        let (a, b) = (TxId(5), TxId(5 + FILTER_BUCKETS as u64));
        map.insert(a, "a");
        assert!(map.get_mut(&b).is_none(), "same bucket, different key");
        map.insert(b, "b");
        assert_eq!(map.remove(&a), Some("a"));
        assert_eq!(map.get_mut(&b).copied(), Some("b"), "the bucket still counts b");
        assert_eq!(map.remove(&b), Some("b"));
        assert!(map.remove(&b).is_none());
        assert_eq!(filter_total(&map), 0);
    }

    #[test]
    fn requests_of_different_clients_spread_over_the_filter() {
        let buckets: std::collections::HashSet<usize> = (0..64u64)
            .flat_map(|client| (0..4u64).map(move |seq| (ClientId(client), seq)))
            .map(|key| BoundedMap::<(ClientId, Seq), ()>::bucket(&key))
            .collect();
        assert!(buckets.len() > 200, "only {} of 256 keys in distinct buckets", buckets.len());
    }
}
