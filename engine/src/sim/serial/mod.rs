//! Serializability of a committed history, checked the standard way: Adya's direct
//! serialization graph (DSG) over the committed transactions, plus real-time edges, must be
//! acyclic. A cycle is reported naming its transactions and the edges that close it.
//!
//! The input is deliberately generic, so interactive transactions (many statements, reads
//! interleaved with writes) fit without a rewrite: a [`Transaction`] is a list of
//! [`Access`]es in program order, each a read (with what it returned) or a write (with the
//! value it wrote), plus when it was submitted and when its client heard it committed. The
//! [`History`] adds, per key, the order in which its committed versions were installed.
//!
//! Edges (all between committed transactions):
//! - `ww`: consecutive versions of a key, in version order;
//! - `wr`: from the writer of the version a read saw to the reader;
//! - `rw` (anti-dependency): from a reader to the writer of the version after the one it saw;
//! - real time: from a transaction whose client heard Committed to every transaction
//!   submitted strictly later (strict serializability: the serial order respects commit
//!   order as clients see it). Built through a chain of barrier nodes, so linear in size.
//!
//! Which version a read saw is exact when values identify their writes. When several
//! versions of a key hold the value read, the read is pinned to the span of candidates: a
//! `wr` edge from the writer of the first candidate and an `rw` edge to the writer of the
//! version after the last. Both are implied (through the `ww` chain) by whichever candidate
//! it really saw, so the check stays sound (no false cycles) and only loses precision.
//!
//! A read that follows the transaction's own write of the same key must return that write
//! (reported otherwise) and adds no edge. Only the last write of a key by a transaction is
//! a version others can see.

mod graph;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::ops::{Key, Value};
use crate::participant::decode_int;
use crate::types::{ParticipantId, Time};

pub(super) use graph::check;

/// A key at the participant that holds it.
pub(super) type KeyRef = (ParticipantId, Key);

/// Index of a transaction in [`History::transactions`].
pub(super) type TxIndex = usize;

/// What a read returned, as precisely as the history knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// The stored bytes (None: the key was absent).
    Bytes(Option<Value>),
    /// An integer, as an `Add` reads its key (absent reads as 0).
    Int(i64),
}

impl Seen {
    /// Whether a version holding `value` could have produced this read.
    fn matches(&self, value: &Option<Value>) -> bool {
        match self {
            Seen::Bytes(bytes) => bytes == value,
            Seen::Int(int) => decode_int(value.as_deref()) == Some(*int),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Read {
        key: KeyRef,
        seen: Seen,
    },
    /// `value` None deletes the key.
    Write {
        key: KeyRef,
        value: Option<Value>,
    },
}

#[derive(Clone, Debug)]
pub(super) struct Transaction {
    /// How violations name it (client, seq, txid).
    pub name: String,
    /// In program order.
    pub accesses: Vec<Access>,
    /// When its client first sent it.
    pub submitted_at: Time,
    /// When its client first heard it committed; None if it never did (it then orders
    /// nothing in real time).
    pub heard_at: Option<Time>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct History {
    pub transactions: Vec<Transaction>,
    /// Per key, the writers of its committed versions in the order they were installed.
    /// Every key starts absent, a version that precedes them all.
    pub version_order: BTreeMap<KeyRef, Vec<TxIndex>>,
}

/// One anomaly found: its kind (how the checker groups violations) and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Anomaly {
    pub kind: &'static str,
    pub message: String,
}

pub(super) const CYCLE: &str = "serializability";
pub(super) const UNEXPLAINED_READ: &str = "serializability-read";

pub(super) fn key_name(key: &KeyRef) -> String {
    format!("{} {}", key.0, String::from_utf8_lossy(&key.1))
}
