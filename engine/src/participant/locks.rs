//! Lock table: shared locks for reads, exclusive for writes, held by transaction id.
//! A request that conflicts fails at once with the holder; interactive transactions queue
//! behind it in the resource manager's wait queues (`waits`), one-shot ones never wait here.

use std::collections::HashMap;

use super::kv::Slot;
use crate::hash::SeededState;
use crate::types::TxId;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LockMode {
    Shared,
    Exclusive,
}

#[derive(Debug)]
enum Lock {
    Shared(Vec<TxId>),
    Exclusive(TxId),
}

/// Keys are stored inline (like the key-value store's): a lookup touches the bucket only,
/// not the network frame a key was sliced from, which is cold by the time of the commit.
#[derive(Debug)]
pub struct LockTable {
    locks: HashMap<Slot, Lock, SeededState>,
}

impl LockTable {
    pub fn new(hash_seed: u64) -> LockTable {
        LockTable { locks: HashMap::with_hasher(SeededState::new(hash_seed)) }
    }

    /// Number of keys locked.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// Takes `mode` on `key` for `txid`, or returns the conflicting holder. Re-taking a lock
    /// already held is a no-op; a lone shared holder may upgrade to exclusive.
    /// Returns whether a new lock entry was recorded for `txid` (so release knows what to drop).
    pub fn try_lock(&mut self, key: &[u8], txid: TxId, mode: LockMode) -> Result<bool, TxId> {
        let Some(lock) = self.locks.get_mut(key) else {
            let lock = match mode {
                LockMode::Shared => Lock::Shared(vec![txid]),
                LockMode::Exclusive => Lock::Exclusive(txid),
            };
            self.locks.insert(Slot::from_slice(key), lock);
            return Ok(true);
        };
        match (lock, mode) {
            (Lock::Exclusive(holder), _) if *holder == txid => Ok(false),
            (Lock::Exclusive(holder), _) => Err(*holder),
            (Lock::Shared(holders), LockMode::Shared) => {
                if holders.contains(&txid) {
                    Ok(false)
                } else {
                    holders.push(txid);
                    Ok(true)
                }
            }
            (Lock::Shared(holders), LockMode::Exclusive) => match holders.as_slice() {
                [only] if *only == txid => {
                    *self.locks.get_mut(key).expect("present") = Lock::Exclusive(txid);
                    Ok(false)
                }
                _ => Err(*holders.iter().find(|h| **h != txid).expect("another holder")),
            },
        }
    }

    /// Releases `txid`'s lock on `key`, if it holds one. One lookup in the common case
    /// (the entry is removed, and put back only if someone else still holds it).
    pub fn unlock(&mut self, key: &[u8], txid: TxId) {
        let Some((slot, mut lock)) = self.locks.remove_entry(key) else { return };
        let still_held = match &mut lock {
            Lock::Exclusive(holder) => *holder != txid,
            Lock::Shared(holders) => {
                holders.retain(|h| *h != txid);
                !holders.is_empty()
            }
        };
        if still_held {
            self.locks.insert(slot, lock);
        }
    }

    /// Whether `txid` already holds `mode` (or stronger) on `key`.
    pub fn holds(&self, key: &[u8], txid: TxId, mode: LockMode) -> bool {
        match self.locks.get(key) {
            Some(Lock::Exclusive(holder)) => *holder == txid,
            Some(Lock::Shared(holders)) => mode == LockMode::Shared && holders.contains(&txid),
            None => false,
        }
    }

    /// The mode `key` is locked in and its holders, if it is locked.
    pub fn holders(&self, key: &[u8]) -> Option<(LockMode, &[TxId])> {
        match self.locks.get(key) {
            Some(Lock::Exclusive(holder)) => Some((LockMode::Exclusive, std::slice::from_ref(holder))),
            Some(Lock::Shared(holders)) => Some((LockMode::Shared, holders.as_slice())),
            None => None,
        }
    }

    /// The transaction holding an exclusive lock on `key`, if any.
    pub fn exclusive_holder(&self, key: &[u8]) -> Option<TxId> {
        match self.locks.get(key) {
            Some(Lock::Exclusive(holder)) => Some(*holder),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::ops::Key;

    fn key(text: &'static str) -> Key {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn shared_locks_share_and_exclusive_excludes() {
        let mut locks = LockTable::new(0);
        let (a, b, c) = (TxId(1), TxId(2), TxId(3));
        assert_eq!(locks.try_lock(&key("k"), a, LockMode::Shared), Ok(true));
        assert_eq!(locks.try_lock(&key("k"), b, LockMode::Shared), Ok(true));
        assert_eq!(locks.try_lock(&key("k"), c, LockMode::Exclusive), Err(a));
        assert_eq!(locks.try_lock(&key("k"), a, LockMode::Exclusive), Err(b), "no upgrade while shared");
        locks.unlock(&key("k"), b);
        assert_eq!(locks.try_lock(&key("k"), a, LockMode::Exclusive), Ok(false), "lone holder upgrades");
        assert_eq!(locks.exclusive_holder(&key("k")), Some(a));
        assert_eq!(locks.try_lock(&key("k"), b, LockMode::Shared), Err(a));
        assert_eq!(locks.try_lock(&key("k"), a, LockMode::Shared), Ok(false));
        locks.unlock(&key("k"), a);
        assert!(locks.is_empty());
    }

    #[test]
    fn unlocking_what_is_not_held_changes_nothing() {
        let mut locks = LockTable::new(0);
        locks.unlock(&key("k"), TxId(1));
        locks.try_lock(&key("k"), TxId(1), LockMode::Exclusive).unwrap();
        locks.unlock(&key("k"), TxId(2));
        assert_eq!(locks.exclusive_holder(&key("k")), Some(TxId(1)));
    }
}
