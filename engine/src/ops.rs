//! What a transaction does and how it ends: operations, votes, outcomes and abort reasons.

use std::fmt;

use bytes::Bytes;

use crate::sql::SqlStatement;
use crate::types::{ParticipantId, TxId};

/// Keys and values are byte strings. `Add` treats a value as a little-endian `i64`
/// (8 bytes); a missing key counts as 0.
pub type Key = Bytes;
pub type Value = Bytes;

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum OpKind {
    Get,
    Put(Value),
    Delete,
    /// Add `delta` to the integer at the key; votes No when the result would be below
    /// `floor` (a debit that must not overdraw).
    Add {
        delta: i64,
        floor: i64,
    },
    /// A parameterised SQL statement for a database participant, in an interactive
    /// transaction only (the op's key is empty). Its result, the rows, is the op's read
    /// (`Read::value` holds `Rows::to_bytes`). Boxed: ops stay as small as before.
    Sql(Box<SqlStatement>),
}

impl OpKind {
    /// Whether the op may write. A statement counts as one: what it does is the database's
    /// to know.
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::Get)
    }

    /// Whether the op's answer is a read (a `Get`'s value, a statement's rows).
    pub fn answers_with_read(&self) -> bool {
        matches!(self, OpKind::Get | OpKind::Sql(_))
    }

    pub fn is_sql(&self) -> bool {
        matches!(self, OpKind::Sql(_))
    }
}

/// One operation of a client's transaction, addressed to a participant.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Op {
    pub participant: ParticipantId,
    pub key: Key,
    pub kind: OpKind,
}

/// An operation as a participant receives it: tagged with its index in the client's
/// transaction so reads come back in the client's order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LocalOp {
    pub index: u16,
    pub key: Key,
    pub kind: OpKind,
}

/// The result of a `Get`: the op's index in the transaction and the value (None: absent).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Read {
    pub index: u16,
    pub value: Option<Value>,
}

/// A participant's answer to `Prepare`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Vote {
    /// Prepared durably; will commit or abort as the coordinator decides.
    Yes {
        reads: Vec<Read>,
    },
    /// Nothing to write here; locks already released, no second phase needed.
    ReadOnly {
        reads: Vec<Read>,
    },
    No {
        reason: AbortReason,
    },
}

/// How an interactive transaction isolates itself from concurrent ones (`u8` on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Isolation {
    /// Strict two-phase locking: shared locks for reads, exclusive for writes, all held to
    /// the end; lock requests wait (bounded by the lock-wait timeout and deadlock detection).
    #[default]
    Serializable,
    /// Reads take no lasting lock and see the latest committed value; writes lock as
    /// under `Serializable`.
    ReadCommitted,
    /// Reads record versions validated at prepare; conflicts abort instead of waiting.
    Optimistic,
}

impl Isolation {
    pub fn tag(self) -> u8 {
        match self {
            Isolation::Serializable => 0,
            Isolation::ReadCommitted => 1,
            Isolation::Optimistic => 2,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Isolation> {
        match tag {
            0 => Some(Isolation::Serializable),
            1 => Some(Isolation::ReadCommitted),
            2 => Some(Isolation::Optimistic),
            _ => None,
        }
    }

    /// A short stable name, for the shell, metrics and reports.
    pub fn label(self) -> &'static str {
        match self {
            Isolation::Serializable => "serializable",
            Isolation::ReadCommitted => "read-committed",
            Isolation::Optimistic => "optimistic",
        }
    }
}

/// At most this many transactions are listed in a [`AbortReason::Deadlock`] cycle (and in
/// a wait-for report's holders): bounds the reply and the decoder's allocation.
pub const LISTED_TXIDS_MAX: usize = 64;

/// Why a transaction aborted, in terms a user can act on.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AbortReason {
    /// Another transaction holds a lock on the key (no-wait locking): retry.
    Conflict { participant: ParticipantId, key: Key },
    /// The key is locked by a transaction whose outcome the participant is still waiting
    /// to learn from the coordinator: retry later.
    InDoubt { participant: ParticipantId, key: Key },
    /// `Add` would take the value below its floor (for example an overdraft).
    Constraint { participant: ParticipantId, key: Key, value: i64, delta: i64, floor: i64 },
    /// `Add` on a value that is not an 8-byte integer.
    NotANumber { participant: ParticipantId, key: Key },
    /// `Add` would overflow an i64.
    Overflow { participant: ParticipantId, key: Key },
    /// The participant did not vote within the prepare timeout.
    Timeout { participant: ParticipantId },
    /// The transaction names a participant the coordinator does not know.
    UnknownParticipant { participant: ParticipantId },
    /// The participant is at its limit of prepared transactions.
    ParticipantBusy { participant: ParticipantId },
    /// The participant refused a prepare that arrived out of order or from a deposed
    /// coordinator epoch.
    Stale { participant: ParticipantId },
    /// The request breaks a limit or is empty; retrying it unchanged cannot succeed.
    Invalid { detail: String },
    /// The coordinator has no connection to the participant (it is down or restarting):
    /// decided at once rather than after the prepare timeout.
    Unavailable { participant: ParticipantId },
    /// The participant's vote broke the protocol (reads that do not match the transaction's
    /// `Get`s, say): counted as a No. A bug or a forgery on that participant's side.
    BadVote { participant: ParticipantId, detail: String },
    /// The transaction was the youngest in a cycle of lock waits: `cycle` lists it first,
    /// then the cycle in wait-for order (at most [`LISTED_TXIDS_MAX`]).
    Deadlock { cycle: Vec<TxId> },
    /// The transaction waited for a lock on `key` longer than the lock-wait timeout.
    LockTimeout { participant: ParticipantId, key: Key },
    /// The client left the interactive transaction idle past its timeout: rolled back.
    IdleTimeout,
    /// The client asked for the rollback.
    RolledBack,
    /// No such open transaction: finished, rolled back, or never begun.
    NotActive,
}

impl AbortReason {
    /// Whether retrying the same transaction later may commit.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AbortReason::Conflict { .. }
                | AbortReason::InDoubt { .. }
                | AbortReason::Timeout { .. }
                | AbortReason::ParticipantBusy { .. }
                | AbortReason::Stale { .. }
                | AbortReason::Unavailable { .. }
                | AbortReason::Deadlock { .. }
                | AbortReason::LockTimeout { .. }
        )
    }

    /// A short stable name, for metrics and reports.
    pub fn label(&self) -> &'static str {
        match self {
            AbortReason::Conflict { .. } => "conflict",
            AbortReason::InDoubt { .. } => "in_doubt",
            AbortReason::Constraint { .. } => "constraint",
            AbortReason::NotANumber { .. } => "not_a_number",
            AbortReason::Overflow { .. } => "overflow",
            AbortReason::Timeout { .. } => "timeout",
            AbortReason::UnknownParticipant { .. } => "unknown_participant",
            AbortReason::ParticipantBusy { .. } => "participant_busy",
            AbortReason::Stale { .. } => "stale",
            AbortReason::Invalid { .. } => "invalid",
            AbortReason::Unavailable { .. } => "unavailable",
            AbortReason::BadVote { .. } => "bad_vote",
            AbortReason::Deadlock { .. } => "deadlock",
            AbortReason::LockTimeout { .. } => "lock_timeout",
            AbortReason::IdleTimeout => "idle_timeout",
            AbortReason::RolledBack => "rolled_back",
            AbortReason::NotActive => "not_active",
        }
    }
}

fn show_key(key: &Key) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => format!("0x{}", key.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Conflict { participant, key } => {
                write!(f, "conflict: key {} on {participant} is locked by another transaction", show_key(key))
            }
            AbortReason::InDoubt { participant, key } => write!(
                f,
                "in doubt: key {} on {participant} is held by a transaction awaiting its coordinator's decision; retry later",
                show_key(key)
            ),
            AbortReason::Constraint { participant, key, value, delta, floor } => write!(
                f,
                "constraint: key {} on {participant} is {value}; adding {delta} would go below the floor {floor}",
                show_key(key)
            ),
            AbortReason::NotANumber { participant, key } => {
                write!(f, "not a number: key {} on {participant} does not hold an 8-byte integer", show_key(key))
            }
            AbortReason::Overflow { participant, key } => {
                write!(f, "overflow: adding to key {} on {participant} would overflow", show_key(key))
            }
            AbortReason::Timeout { participant } => write!(f, "timeout: {participant} did not vote in time"),
            AbortReason::UnknownParticipant { participant } => {
                write!(f, "unknown participant: {participant} is not configured on this coordinator")
            }
            AbortReason::ParticipantBusy { participant } => {
                write!(f, "busy: {participant} is at its limit of prepared transactions")
            }
            AbortReason::Stale { participant } => {
                write!(f, "stale: {participant} refused an out-of-order or deposed-epoch prepare")
            }
            AbortReason::Invalid { detail } => write!(f, "invalid request: {detail}"),
            AbortReason::Unavailable { participant } => {
                write!(f, "unavailable: {participant} is not connected to the coordinator; retry later")
            }
            AbortReason::BadVote { participant, detail } => {
                write!(f, "protocol error: {participant} sent a vote the coordinator refused ({detail})")
            }
            AbortReason::Deadlock { cycle } => {
                let listed: Vec<String> = cycle.iter().map(TxId::to_string).collect();
                write!(f, "deadlock: chosen as the youngest of the lock-wait cycle {}; retry", listed.join(" -> "))
            }
            AbortReason::LockTimeout { participant, key } => {
                write!(f, "lock timeout: waited too long for key {} on {participant}; retry", show_key(key))
            }
            AbortReason::IdleTimeout => {
                write!(f, "idle timeout: the transaction was left idle too long and rolled back")
            }
            AbortReason::RolledBack => write!(f, "rolled back at the client's request"),
            AbortReason::NotActive => {
                write!(f, "not active: no such open transaction (finished, rolled back, or never begun)")
            }
        }
    }
}

/// How a transaction ended, as the client hears it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Committed durably; `reads` holds one entry per `Get`, in op order.
    Committed {
        reads: Vec<Read>,
    },
    Aborted {
        reason: AbortReason,
    },
    /// Committed durably, but the values its `Get`s read are lost: a restarted coordinator
    /// resolved it from its participants, and a participant that had only read (or had
    /// restarted too) no longer holds them. Never sent for a transaction without `Get`s.
    CommittedReadsUnavailable,
}

impl Outcome {
    /// Committed, with or without its reads.
    pub fn is_committed(&self) -> bool {
        matches!(self, Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable)
    }
}

/// Size limits a request must respect. Checked by decoders before allocating and again by
/// the coordinator, so a bad request is refused with a reason rather than half-served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    pub max_ops_per_tx: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        // 256 ops of the largest key and value stay under half of a 16 MiB frame, so a
        // prepare or a reply full of reads always fits the frame its request came in.
        Limits { max_ops_per_tx: 256, max_key_bytes: 1024, max_value_bytes: 32 * 1024 }
    }
}

impl Limits {
    /// Checks a one-shot transaction's (or a saga step's) ops, returning what is wrong in
    /// words. SQL statements are refused: they run in interactive transactions only.
    pub fn check_ops(&self, ops: &[Op]) -> Result<(), String> {
        if let Some(index) = ops.iter().position(|op| op.kind.is_sql()) {
            return Err(format!("op {index}: SQL statements run only inside interactive transactions"));
        }
        self.check_interactive_ops(ops)
    }

    /// Checks the ops of an interactive `Execute`: as [`check_ops`](Self::check_ops), and
    /// SQL statements within their bounds (text and parameters within `max_value_bytes`).
    pub fn check_interactive_ops(&self, ops: &[Op]) -> Result<(), String> {
        if ops.is_empty() {
            return Err("a transaction needs at least one operation".into());
        }
        self.check_sizes(ops)?;
        for (index, op) in ops.iter().enumerate() {
            if let OpKind::Sql(_) = &op.kind
                && !op.key.is_empty()
            {
                return Err(format!("op {index}: an SQL statement has no key"));
            }
        }
        Ok(())
    }

    /// What a decoder refuses, together with the frame that carries it: more ops than
    /// `max_ops_per_tx`, a key or value above its bound, an SQL statement beyond its
    /// bounds. A client checks this before it sends (the receiver would drop the whole
    /// frame and the connection with it; a key above 64 KiB cannot even be encoded); the
    /// rest of [`check_ops`](Self::check_ops) is the coordinator's to answer.
    pub fn check_sizes(&self, ops: &[Op]) -> Result<(), String> {
        if ops.len() > self.max_ops_per_tx {
            return Err(format!("{} operations exceed the limit of {}", ops.len(), self.max_ops_per_tx));
        }
        for (index, op) in ops.iter().enumerate() {
            if op.key.len() > self.max_key_bytes {
                return Err(format!(
                    "op {index}: key of {} bytes exceeds the limit of {}",
                    op.key.len(),
                    self.max_key_bytes
                ));
            }
            if let OpKind::Put(value) = &op.kind
                && value.len() > self.max_value_bytes
            {
                return Err(format!(
                    "op {index}: value of {} bytes exceeds the limit of {}",
                    value.len(),
                    self.max_value_bytes
                ));
            }
            if let OpKind::Sql(statement) = &op.kind {
                statement.check(self.max_value_bytes).map_err(|detail| format!("op {index}: {detail}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, kind: OpKind) -> Op {
        Op { participant: ParticipantId(1), key: Bytes::copy_from_slice(key.as_bytes()), kind }
    }

    #[test]
    fn limits_refuse_empty_and_oversized_requests() {
        let limits = Limits { max_ops_per_tx: 2, max_key_bytes: 4, max_value_bytes: 3 };
        assert!(limits.check_ops(&[]).unwrap_err().contains("at least one"));
        let three = vec![op("a", OpKind::Get), op("b", OpKind::Get), op("c", OpKind::Get)];
        assert!(limits.check_ops(&three).unwrap_err().contains("3 operations"));
        assert!(limits.check_ops(&[op("toolong", OpKind::Get)]).unwrap_err().contains("key of 7 bytes"));
        let big = op("k", OpKind::Put(Bytes::from_static(b"1234")));
        assert!(limits.check_ops(&[big]).unwrap_err().contains("value of 4 bytes"));
        assert!(limits.check_ops(&[op("k", OpKind::Delete)]).is_ok());
    }

    #[test]
    fn sizes_are_what_a_decoder_refuses_and_no_more() {
        let limits = Limits { max_ops_per_tx: 2, max_key_bytes: 4, max_value_bytes: 3 };
        assert!(limits.check_sizes(&[]).is_ok(), "the coordinator answers an empty transaction");
        let long_key = op(&"k".repeat(70_000), OpKind::Get);
        assert!(limits.check_sizes(&[long_key]).unwrap_err().contains("op 0: key of 70000 bytes"));
        let big = op("k", OpKind::Put(Bytes::from_static(b"1234")));
        assert!(limits.check_sizes(&[op("k", OpKind::Get), big]).unwrap_err().contains("op 1: value of 4 bytes"));
        let three = vec![op("a", OpKind::Get), op("b", OpKind::Get), op("c", OpKind::Get)];
        assert!(limits.check_sizes(&three).unwrap_err().contains("3 operations"));
    }

    #[test]
    fn sql_runs_only_in_interactive_transactions_and_within_its_bounds() {
        let statement = |sql: &str| OpKind::Sql(Box::new(SqlStatement { sql: sql.into(), params: vec![] }));
        let select = op("", statement("SELECT 1"));
        let limits = Limits::default();
        assert!(limits.check_ops(std::slice::from_ref(&select)).unwrap_err().contains("only inside interactive"));
        assert!(limits.check_interactive_ops(&[select]).is_ok());
        let big = op("", statement(&"x".repeat(limits.max_value_bytes)));
        assert!(limits.check_interactive_ops(&[big]).unwrap_err().contains("op 0: an SQL statement of"));
        let keyed = op("k", statement("SELECT 1"));
        assert!(limits.check_interactive_ops(&[keyed]).unwrap_err().contains("has no key"));
        assert!(OpKind::Get.answers_with_read() && statement("SELECT 1").answers_with_read());
        assert!(!OpKind::Delete.answers_with_read() && statement("SELECT 1").is_write());
    }

    #[test]
    fn reasons_read_well() {
        let reason = AbortReason::Constraint {
            participant: ParticipantId(2),
            key: Bytes::from_static(b"acct/7"),
            value: 5,
            delta: -10,
            floor: 0,
        };
        assert_eq!(reason.to_string(), "constraint: key \"acct/7\" on p2 is 5; adding -10 would go below the floor 0");
        let binary = AbortReason::Conflict { participant: ParticipantId(1), key: Bytes::from_static(&[0, 255]) };
        assert!(binary.to_string().contains("0x00ff"));
        assert!(binary.is_retryable());
        assert!(!reason.is_retryable());
        let in_doubt = AbortReason::InDoubt { participant: ParticipantId(3), key: Bytes::from_static(b"acct/9") };
        assert_eq!(
            in_doubt.to_string(),
            "in doubt: key \"acct/9\" on p3 is held by a transaction awaiting its coordinator's decision; retry later"
        );
        assert_eq!((in_doubt.label(), in_doubt.is_retryable()), ("in_doubt", true));
        let deadlock = AbortReason::Deadlock { cycle: vec![TxId(9), TxId(4)] };
        assert_eq!(deadlock.to_string(), "deadlock: chosen as the youngest of the lock-wait cycle t0.9 -> t0.4; retry");
        assert!(deadlock.is_retryable());
        assert!(AbortReason::LockTimeout { participant: ParticipantId(1), key: Bytes::new() }.is_retryable());
        for reason in [AbortReason::IdleTimeout, AbortReason::RolledBack, AbortReason::NotActive] {
            assert!(!reason.is_retryable(), "{reason}");
        }
    }

    #[test]
    fn isolation_tags_round_trip() {
        for isolation in [Isolation::Serializable, Isolation::ReadCommitted, Isolation::Optimistic] {
            assert_eq!(Isolation::from_tag(isolation.tag()), Some(isolation));
        }
        assert_eq!(Isolation::from_tag(3), None);
        assert_eq!(Isolation::default(), Isolation::Serializable);
    }
}
