//! Database failures as reasons a participant can act on (abort, retry, reconnect), with the
//! database's own words kept for the operator.

use std::fmt;

/// Why a database operation failed. Only the reasons a participant acts on differently get
/// a variant of their own; the rest are `Other` with the database's message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Reason {
    /// The database could not serialise the transaction (PostgreSQL 40001); retryable.
    SerializationFailure,
    /// The database's own deadlock detector chose this transaction (40P01, MariaDB 1213).
    DeadlockDetected,
    /// A lock wait ran out (PostgreSQL 55P03 with `lock_timeout`, MariaDB 1205).
    LockWaitTimeout,
    /// An integrity constraint refused the write: the accounts table's `CHECK (balance >= 0)`
    /// on an overdraft, or an `Add` below its floor.
    Constraint,
    /// An `Add` on a value that is not an 8-byte integer.
    NotAnInteger,
    /// An `Add` that would overflow a 64-bit integer.
    Overflow,
    /// The connection broke (server gone, restarted, network); the open transaction is lost
    /// (a prepared one is not).
    ConnectionLost,
    /// The database ran out of disk.
    DiskFull,
    /// No prepared transaction of that gid (already resolved, or never prepared).
    UnknownTransaction,
    /// Every connection is in use or the request queue is full: try again later.
    Busy,
    /// The request itself is wrong (no such open transaction, bad SQL parameter, ...).
    InvalidRequest,
    /// Anything else the database said.
    Other,
}

impl Reason {
    /// Whether running the whole transaction again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Reason::SerializationFailure
                | Reason::DeadlockDetected
                | Reason::LockWaitTimeout
                | Reason::ConnectionLost
                | Reason::Busy
        )
    }

    fn words(self) -> &'static str {
        match self {
            Reason::SerializationFailure => "serialization failure",
            Reason::DeadlockDetected => "deadlock detected",
            Reason::LockWaitTimeout => "lock wait timeout",
            Reason::Constraint => "constraint violated",
            Reason::NotAnInteger => "not an 8-byte integer",
            Reason::Overflow => "integer overflow",
            Reason::ConnectionLost => "connection lost",
            Reason::DiskFull => "disk full",
            Reason::UnknownTransaction => "unknown prepared transaction",
            Reason::Busy => "busy",
            Reason::InvalidRequest => "invalid request",
            Reason::Other => "database error",
        }
    }
}

/// A failed operation: the reason and the details (the database's code and message).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DbError {
    pub reason: Reason,
    pub detail: String,
}

impl DbError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> DbError {
        DbError { reason, detail: detail.into() }
    }

    pub fn invalid(detail: impl Into<String>) -> DbError {
        DbError::new(Reason::InvalidRequest, detail)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.words(), self.detail)
    }
}

impl std::error::Error for DbError {}

/// PostgreSQL SQLSTATE → reason (Appendix A of its manual).
pub fn reason_of_sqlstate(code: &str) -> Reason {
    match code {
        "40001" => Reason::SerializationFailure,
        "40P01" => Reason::DeadlockDetected,
        "55P03" => Reason::LockWaitTimeout,
        "53100" => Reason::DiskFull,
        // out_of_memory (also "maximum number of prepared transactions reached", every
        // `max_prepared_transactions` slot holds a prepared transaction awaiting its
        // decision) and too_many_connections: the server is out of a resource that frees
        // itself; retry later.
        "53200" | "53300" => Reason::Busy,
        "22003" => Reason::Overflow,
        // undefined_object: "prepared transaction with identifier ... does not exist".
        "42704" => Reason::UnknownTransaction,
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is going away.
        "57P01" | "57P02" | "57P03" => Reason::ConnectionLost,
        _ if code.starts_with("23") => Reason::Constraint,
        _ if code.starts_with("08") => Reason::ConnectionLost,
        _ => Reason::Other,
    }
}

/// MariaDB / MySQL server error number → reason.
pub fn reason_of_mysql_code(code: u16) -> Reason {
    match code {
        // ER_LOCK_DEADLOCK, ER_XA_RBDEADLOCK.
        1213 | 1614 => Reason::DeadlockDetected,
        // ER_LOCK_WAIT_TIMEOUT, ER_XA_RBTIMEOUT.
        1205 | 1613 => Reason::LockWaitTimeout,
        // ER_CHECKREAD: snapshot isolation saw a changed record.
        1020 => Reason::SerializationFailure,
        // ER_CONSTRAINT_FAILED (MariaDB CHECK), ER_CHECK_CONSTRAINT_VIOLATED (MySQL),
        // ER_DUP_ENTRY, ER_BAD_NULL_ERROR, foreign keys.
        4025 | 3819 | 1062 | 1048 | 1451 | 1452 => Reason::Constraint,
        // ER_WARN_DATA_OUT_OF_RANGE, ER_DATA_OUT_OF_RANGE.
        1264 | 1690 => Reason::Overflow,
        // ER_DISK_FULL, ER_RECORD_FILE_FULL, ER_OUT_OF_RESOURCES with no space.
        1021 | 1114 => Reason::DiskFull,
        // ER_XAER_NOTA: unknown XID.
        1397 => Reason::UnknownTransaction,
        // Server shutting down, connection killed.
        1053 | 1927 | 2006 | 2013 => Reason::ConnectionLost,
        _ => Reason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_reasons() {
        assert_eq!(reason_of_sqlstate("40001"), Reason::SerializationFailure);
        assert_eq!(reason_of_sqlstate("40P01"), Reason::DeadlockDetected);
        assert_eq!(reason_of_sqlstate("23514"), Reason::Constraint);
        assert_eq!(reason_of_sqlstate("23505"), Reason::Constraint);
        assert_eq!(reason_of_sqlstate("53100"), Reason::DiskFull);
        assert_eq!(reason_of_sqlstate("53200"), Reason::Busy, "max_prepared_transactions reached");
        assert_eq!(reason_of_sqlstate("08006"), Reason::ConnectionLost);
        assert_eq!(reason_of_sqlstate("42704"), Reason::UnknownTransaction);
        assert_eq!(reason_of_sqlstate("42601"), Reason::Other);
    }

    #[test]
    fn mysql_codes_map_to_reasons() {
        assert_eq!(reason_of_mysql_code(1213), Reason::DeadlockDetected);
        assert_eq!(reason_of_mysql_code(4025), Reason::Constraint);
        assert_eq!(reason_of_mysql_code(1205), Reason::LockWaitTimeout);
        assert_eq!(reason_of_mysql_code(1397), Reason::UnknownTransaction);
        assert_eq!(reason_of_mysql_code(1114), Reason::DiskFull);
        assert_eq!(reason_of_mysql_code(1064), Reason::Other);
    }

    #[test]
    fn display_names_reason_and_detail() {
        let err = DbError::new(Reason::Constraint, "23514: check violation");
        assert_eq!(err.to_string(), "constraint violated: 23514: check violation");
        assert!(Reason::DeadlockDetected.is_retryable());
        assert!(!Reason::Constraint.is_retryable());
    }
}
