//! The built-in key-value resource manager: evaluates a transaction's operations against
//! the committed state into reads and a write set, and applies committed write sets.
//! It knows nothing of locks or logs; the participant state machine owns those.

use std::collections::HashMap;

use bytes::Bytes;

use crate::hash::SeededState;
use crate::ops::{AbortReason, Key, LocalOp, OpKind, Read, Value};
use crate::record::Write;
use crate::types::ParticipantId;

/// What evaluating a transaction's ops produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub reads: Vec<Read>,
    /// Final value per key written (None: deleted), in first-write order.
    pub writes: Vec<Write>,
}

#[derive(Debug)]
pub struct KvStore {
    map: HashMap<Key, Value, SeededState>,
}

/// Decodes an integer value; a missing key counts as zero.
pub fn decode_int(value: Option<&Value>) -> Option<i64> {
    match value {
        None => Some(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref()).ok().map(i64::from_le_bytes),
    }
}

pub fn encode_int(value: i64) -> Value {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

impl KvStore {
    pub fn new(hash_seed: u64) -> KvStore {
        KvStore { map: HashMap::with_hasher(SeededState::new(hash_seed)) }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.map.iter()
    }

    /// Runs `ops` in order on a private overlay of the current state. Fails with the reason
    /// the participant must vote No.
    pub fn evaluate(&self, participant: ParticipantId, ops: &[LocalOp]) -> Result<Evaluation, AbortReason> {
        let mut evaluation = Evaluation::default();
        for op in ops {
            let current = || -> Option<Value> {
                match evaluation.writes.iter().find(|w| w.key == op.key) {
                    Some(write) => write.value.clone(),
                    None => self.map.get(&op.key).cloned(),
                }
            };
            let new_value = match &op.kind {
                OpKind::Get => {
                    evaluation.reads.push(Read { index: op.index, value: current() });
                    continue;
                }
                OpKind::Put(value) => Some(value.clone()),
                OpKind::Delete => None,
                OpKind::Add { delta, floor } => Some(add(participant, &op.key, current().as_ref(), *delta, *floor)?),
            };
            match evaluation.writes.iter_mut().find(|w| w.key == op.key) {
                Some(write) => write.value = new_value,
                None => evaluation.writes.push(Write { key: owned(&op.key), value: new_value.map(|v| owned(&v)) }),
            }
        }
        Ok(evaluation)
    }

    /// Applies a committed write set.
    pub fn apply(&mut self, writes: &[Write]) {
        for write in writes {
            match &write.value {
                Some(value) => {
                    self.map.insert(write.key.clone(), value.clone());
                }
                None => {
                    self.map.remove(&write.key);
                }
            }
        }
    }

    /// Like [`apply`](Self::apply), taking the writes (no reference counts touched: the
    /// commit path owns them once the transaction is forgotten).
    pub fn apply_owned(&mut self, writes: Vec<Write>) {
        for write in writes {
            match write.value {
                Some(value) => {
                    self.map.insert(write.key, value);
                }
                None => {
                    self.map.remove(&write.key);
                }
            }
        }
    }
}

/// A copy that does not pin the (possibly large) network frame it was sliced from.
fn owned(bytes: &Bytes) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

fn add(
    participant: ParticipantId,
    key: &Key,
    current: Option<&Value>,
    delta: i64,
    floor: i64,
) -> Result<Value, AbortReason> {
    let Some(value) = decode_int(current) else {
        return Err(AbortReason::NotANumber { participant, key: key.clone() });
    };
    let Some(sum) = value.checked_add(delta) else {
        return Err(AbortReason::Overflow { participant, key: key.clone() });
    };
    if sum < floor {
        return Err(AbortReason::Constraint { participant, key: key.clone(), value, delta, floor });
    }
    Ok(encode_int(sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ParticipantId = ParticipantId(1);

    fn op(index: u16, key: &'static str, kind: OpKind) -> LocalOp {
        LocalOp { index, key: Bytes::from_static(key.as_bytes()), kind }
    }

    #[test]
    fn ops_see_earlier_writes_of_the_same_transaction() {
        let mut kv = KvStore::new(0);
        kv.apply(&[Write { key: Bytes::from_static(b"a"), value: Some(encode_int(10)) }]);
        let eval = kv
            .evaluate(
                P,
                &[
                    op(0, "a", OpKind::Add { delta: -4, floor: 0 }),
                    op(1, "a", OpKind::Get),
                    op(2, "b", OpKind::Put(Bytes::from_static(b"x"))),
                    op(3, "b", OpKind::Delete),
                    op(4, "b", OpKind::Get),
                ],
            )
            .unwrap();
        assert_eq!(eval.reads, vec![Read { index: 1, value: Some(encode_int(6)) }, Read { index: 4, value: None }]);
        assert_eq!(eval.writes.len(), 2);
        assert_eq!(eval.writes[1], Write { key: Bytes::from_static(b"b"), value: None });
        assert_eq!(decode_int(kv.get(b"a")), Some(10), "evaluation does not change the store");
    }

    #[test]
    fn add_enforces_floor_type_and_overflow() {
        let mut kv = KvStore::new(0);
        kv.apply(&[
            Write { key: Bytes::from_static(b"acct"), value: Some(encode_int(5)) },
            Write { key: Bytes::from_static(b"text"), value: Some(Bytes::from_static(b"hello")) },
            Write { key: Bytes::from_static(b"big"), value: Some(encode_int(i64::MAX)) },
        ]);
        let err = kv.evaluate(P, &[op(0, "acct", OpKind::Add { delta: -6, floor: 0 })]).unwrap_err();
        assert!(matches!(err, AbortReason::Constraint { value: 5, delta: -6, floor: 0, .. }), "{err:?}");
        let err = kv.evaluate(P, &[op(0, "text", OpKind::Add { delta: 1, floor: 0 })]).unwrap_err();
        assert!(matches!(err, AbortReason::NotANumber { .. }));
        let err = kv.evaluate(P, &[op(0, "big", OpKind::Add { delta: 1, floor: 0 })]).unwrap_err();
        assert!(matches!(err, AbortReason::Overflow { .. }));
        let eval = kv.evaluate(P, &[op(0, "new", OpKind::Add { delta: 3, floor: 0 })]).unwrap();
        assert_eq!(eval.writes[0].value, Some(encode_int(3)), "a missing key counts as zero");
    }
}
