//! A map with a fixed capacity that drops its oldest entry to make room.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use twophase_engine::hash::SeededState;

/// Insertion-ordered eviction: when full, inserting drops the oldest entry still present
/// (and returns it, so its spans can be ended). Removing is by key; the order queue is
/// compacted once stale keys make it twice the capacity. Hashed with the engine's fast
/// seeded hasher (keys come from the wire: the seed is random, so no one can aim collisions).
pub(crate) struct BoundedMap<K, V> {
    map: HashMap<K, V, SeededState>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Copy + Eq + Hash, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> BoundedMap<K, V> {
        assert!(capacity > 0, "a bounded map needs room for one entry");
        let hasher = SeededState::new(rand::random());
        BoundedMap { map: HashMap::with_hasher(hasher), order: VecDeque::new(), capacity }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    /// Inserts (or replaces) `key`; returns the entry evicted to make room, if any.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        if let Some(old) = self.map.get_mut(&key) {
            *old = value;
            return None;
        }
        let evicted = if self.map.len() >= self.capacity { self.evict_oldest() } else { None };
        self.map.insert(key, value);
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
                return Some((key, value));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_present_entry_makes_room() {
        let mut map = BoundedMap::new(2);
        assert!(map.insert(1, "a").is_none());
        assert!(map.insert(2, "b").is_none());
        assert_eq!(map.remove(&1), Some("a"));
        assert!(map.insert(3, "c").is_none(), "room was made by the removal");
        assert_eq!(map.insert(4, "d"), Some((2, "b")));
        assert_eq!(map.map.len(), 2);
        assert!(map.get_mut(&3).is_some() && map.get_mut(&4).is_some());
    }

    #[test]
    fn churn_without_eviction_keeps_the_order_queue_bounded() {
        let mut map = BoundedMap::new(4);
        for key in 0..10_000u64 {
            map.insert(key, ());
            map.remove(&key);
            assert!(map.order.len() <= 8);
        }
        assert!(map.is_empty());
    }

    #[test]
    fn replacing_a_key_keeps_one_entry() {
        let mut map = BoundedMap::new(1);
        map.insert(7, 1);
        assert!(map.insert(7, 2).is_none());
        assert_eq!(map.remove(&7), Some(2));
    }
}
