//! The 3PC participant's resource manager: the built-in key-value store and its lock
//! table. A CanCommit's payload is the participant's ops (`u16 count | LocalOp × count`);
//! preparing takes every key's lock without waiting (a locked key votes No) and evaluates
//! the ops against the committed state (the bank's `Add { delta, floor }` must not go
//! below its floor), keeping the write set until the decision: commit applies it, abort
//! drops it; both release the locks.
//!
//! Invariant: a transaction holds its locks from a Yes until its write set is applied or
//! dropped, also across restarts ([`Store3::recover`] re-locks the undecided ones).

use std::collections::HashMap;

use bytes::Bytes;
use twophase_engine::codec::{MIN_OP_BYTES, Reader, put_list, read_list};
use twophase_engine::participant::{KvStore, LockMode, LockTable};
use twophase_engine::threepc::{PartLog3, PartRecord3};
use twophase_engine::{Limits, LocalOp, Lsn, OpKind, ParticipantId, TxId, Write};

/// The payload of a CanCommit: a participant's ops.
pub fn encode_ops(ops: &[LocalOp]) -> Vec<u8> {
    let mut out = Vec::new();
    put_list(&mut out, ops);
    out
}

fn decode_ops(payload: &[u8], limits: Limits) -> Result<Vec<LocalOp>, String> {
    let mut reader = Reader::new(Bytes::copy_from_slice(payload), limits);
    let ops = read_list(&mut reader, limits.max_ops_per_tx, MIN_OP_BYTES, "ops").map_err(|err| err.to_string())?;
    reader.finish().map_err(|err| err.to_string())?;
    limits.check_ops(&ops_as_client_ops(&ops))?;
    Ok(ops)
}

/// `Limits::check_ops` takes client ops; the participant id does not matter to it.
fn ops_as_client_ops(ops: &[LocalOp]) -> Vec<twophase_engine::Op> {
    ops.iter()
        .map(|op| twophase_engine::Op { participant: ParticipantId(0), key: op.key.clone(), kind: op.kind.clone() })
        .collect()
}

/// Why a prepare voted No (logged; 3PC votes carry no reason).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed(String),
    Locked { key: Bytes, holder: TxId },
    Refused(String),
}

/// A transaction prepared here: its write set and the keys it locked.
#[derive(Debug)]
struct Prepared {
    writes: Vec<Write>,
    locked: Vec<Bytes>,
}

pub struct Store3 {
    id: ParticipantId,
    limits: Limits,
    kv: KvStore,
    locks: LockTable,
    prepared: HashMap<TxId, Prepared>,
}

impl Store3 {
    pub fn new(id: ParticipantId, hash_seed: u64) -> Store3 {
        Store3 {
            id,
            limits: Limits::default(),
            kv: KvStore::new(hash_seed),
            locks: LockTable::new(hash_seed),
            prepared: HashMap::new(),
        }
    }

    /// Rebuilds the store from the whole log: committed write sets applied in log order,
    /// undecided ones prepared again with their locks.
    pub fn recover(id: ParticipantId, hash_seed: u64, log: &[(Lsn, PartLog3)]) -> Store3 {
        let mut store = Store3::new(id, hash_seed);
        let mut undecided: HashMap<TxId, Vec<Write>> = HashMap::new();
        for (_, entry) in log {
            match &entry.record {
                PartRecord3::Uncertain { txid, .. } => {
                    undecided.insert(*txid, entry.writes.clone());
                }
                PartRecord3::PreCommitted { .. } => {}
                PartRecord3::Decided { txid, commit } => {
                    let writes = undecided.remove(txid).unwrap_or_default();
                    if *commit {
                        store.kv.apply(&writes);
                    }
                }
            }
        }
        for (txid, writes) in undecided {
            let locked: Vec<Bytes> = writes.iter().map(|write| write.key.clone()).collect();
            for key in &locked {
                let taken = store.locks.try_lock(key, txid, LockMode::Exclusive);
                assert!(taken.is_ok(), "3pc {txid}: two undecided transactions of the log hold {key:?}");
            }
            store.prepared.insert(txid, Prepared { writes, locked });
        }
        store
    }

    /// Prepares `txid`'s ops (the CanCommit payload): Ok keeps the write set and the locks
    /// until [`Store3::finish`].
    pub fn prepare(&mut self, txid: TxId, payload: &[u8]) -> Result<(), Refusal> {
        assert!(!self.prepared.contains_key(&txid), "3pc {txid}: prepared twice");
        let ops = decode_ops(payload, self.limits).map_err(Refusal::Malformed)?;
        let mut locked = Vec::with_capacity(ops.len());
        for op in &ops {
            let mode = if matches!(op.kind, OpKind::Get) { LockMode::Shared } else { LockMode::Exclusive };
            match self.locks.try_lock(&op.key, txid, mode) {
                Ok(true) => locked.push(op.key.clone()),
                Ok(false) => {}
                Err(holder) => {
                    self.unlock(txid, &locked);
                    return Err(Refusal::Locked { key: op.key.clone(), holder });
                }
            }
        }
        match self.kv.evaluate(self.id, &ops) {
            Ok(evaluation) => {
                self.prepared.insert(txid, Prepared { writes: evaluation.writes, locked });
                Ok(())
            }
            Err(reason) => {
                self.unlock(txid, &locked);
                Err(Refusal::Refused(reason.to_string()))
            }
        }
    }

    /// The write set prepared for `txid` (what its `Uncertain` record carries).
    pub fn writes(&self, txid: TxId) -> Vec<Write> {
        self.prepared.get(&txid).map(|prepared| prepared.writes.clone()).unwrap_or_default()
    }

    /// The decision reached `txid`: apply (commit) or drop its write set, release its
    /// locks. A transaction not prepared here (voted No, or already finished) is a no-op.
    pub fn finish(&mut self, txid: TxId, commit: bool) {
        let Some(prepared) = self.prepared.remove(&txid) else { return };
        if commit {
            self.kv.apply(&prepared.writes);
        }
        self.unlock(txid, &prepared.locked);
    }

    fn unlock(&mut self, txid: TxId, keys: &[Bytes]) {
        for key in keys {
            self.locks.unlock(key, txid);
        }
    }

    /// Transactions prepared and not finished (what a dump reports as prepared).
    pub fn prepared(&self) -> usize {
        self.prepared.len()
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }
}

#[cfg(test)]
mod tests {
    use twophase_engine::participant::{decode_int, encode_int};

    use super::*;

    const P: ParticipantId = ParticipantId(1);

    fn add(index: u16, key: &'static str, delta: i64, floor: i64) -> LocalOp {
        LocalOp { index, key: Bytes::from_static(key.as_bytes()), kind: OpKind::Add { delta, floor } }
    }

    fn balance(store: &Store3, key: &str) -> i64 {
        decode_int(store.kv().get(key.as_bytes())).unwrap()
    }

    #[test]
    fn a_locked_key_votes_no_and_the_lock_is_released_by_the_decision() {
        let mut store = Store3::new(P, 7);
        let (t1, t2) = (TxId(1), TxId(2));
        store.prepare(t1, &encode_ops(&[add(0, "alice", 100, 0)])).unwrap();
        let refused = store.prepare(t2, &encode_ops(&[add(0, "bob", 5, 0), add(1, "alice", 5, 0)])).unwrap_err();
        assert_eq!(refused, Refusal::Locked { key: Bytes::from_static(b"alice"), holder: t1 });
        // The refused prepare released what it had taken: bob is free.
        store.prepare(TxId(3), &encode_ops(&[add(0, "bob", 1, 0)])).unwrap();
        store.finish(t1, true);
        assert_eq!(balance(&store, "alice"), 100);
        store.prepare(t2, &encode_ops(&[add(0, "alice", -30, 0)])).unwrap();
        store.finish(t2, false);
        assert_eq!(balance(&store, "alice"), 100, "an abort applies nothing");
        assert_eq!(store.prepared(), 1);
    }

    #[test]
    fn a_debit_below_its_floor_votes_no() {
        let mut store = Store3::new(P, 7);
        store.prepare(TxId(1), &encode_ops(&[add(0, "alice", 10, 0)])).unwrap();
        store.finish(TxId(1), true);
        let refused = store.prepare(TxId(2), &encode_ops(&[add(0, "alice", -11, 0)])).unwrap_err();
        assert!(matches!(refused, Refusal::Refused(reason) if reason.contains("floor")));
        assert_eq!(store.prepared(), 0);
        assert!(matches!(store.prepare(TxId(3), &[1, 2, 3]), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn the_log_rebuilds_committed_state_and_relocks_the_undecided() {
        let participants = vec![P, ParticipantId(2)];
        let write = |key: &'static str, value: i64| Write {
            key: Bytes::from_static(key.as_bytes()),
            value: Some(encode_int(value)),
        };
        let uncertain = |txid, writes| {
            (Lsn(0), PartLog3::new(PartRecord3::Uncertain { txid, participants: participants.clone() }, writes))
        };
        let decided = |txid, commit| (Lsn(0), PartLog3::new(PartRecord3::Decided { txid, commit }, Vec::new()));
        let log = vec![
            uncertain(TxId(1), vec![write("alice", 50)]),
            decided(TxId(1), true),
            uncertain(TxId(2), vec![write("alice", 70)]),
            decided(TxId(2), false),
            uncertain(TxId(3), vec![write("bob", 9)]),
            (Lsn(0), PartLog3::new(PartRecord3::PreCommitted { txid: TxId(3) }, Vec::new())),
        ];
        let mut store = Store3::recover(P, 7, &log);
        assert_eq!(balance(&store, "alice"), 50);
        assert_eq!(store.kv().get(b"bob"), None);
        assert_eq!(store.prepared(), 1);
        assert!(matches!(store.prepare(TxId(4), &encode_ops(&[add(0, "bob", 1, 0)])), Err(Refusal::Locked { .. })));
        store.finish(TxId(3), true);
        assert_eq!(balance(&store, "bob"), 9);
    }
}
