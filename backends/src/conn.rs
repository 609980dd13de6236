//! The blocking face every database backend implements: one connection, one transaction at a
//! time. The executor (`pool`) runs these calls on its own threads; nothing here may be
//! called from the engine thread.

use std::time::Duration;

use crate::error::DbError;
use crate::gid::Gid;
use crate::kv::{KvOp, KvOutcome};
use crate::sql::{Rows, SqlLimits, SqlValue};

/// One database connection.
///
/// Between `begin` and `prepare`/`rollback` the connection belongs to that transaction.
/// After `prepare` the transaction lives in the database under its gid, detached from the
/// connection: any connection may commit or roll it back, also after a restart.
pub trait Connection: Send + 'static {
    /// Creates the `kv` and `accounts` tables when missing.
    fn ensure_schema(&mut self) -> Result<(), DbError>;
    /// Opens a transaction bound to `gid`.
    fn begin(&mut self, gid: &Gid) -> Result<(), DbError>;
    fn kv(&mut self, op: &KvOp) -> Result<KvOutcome, DbError>;
    /// A parameterised statement (`$1` placeholders for PostgreSQL, `?` for MariaDB).
    fn execute(&mut self, sql: &str, params: &[SqlValue], limits: &SqlLimits) -> Result<Rows, DbError>;
    /// Makes the open transaction durable and detached. A failure with
    /// `Reason::ConnectionLost` leaves it unknown whether it prepared: recovery will say.
    fn prepare(&mut self, gid: &Gid) -> Result<(), DbError>;
    /// Whether the connection is free for other work once `prepare` returned (PostgreSQL).
    /// If not (MariaDB: the session stays in the XA PREPARED state until the branch is
    /// decided or the session ends), the pool keeps the connection with the prepared
    /// transaction and decides it there.
    fn prepare_detaches(&self) -> bool;
    /// Rolls back the open (not prepared) transaction.
    fn rollback(&mut self, gid: &Gid) -> Result<(), DbError>;
    fn commit_prepared(&mut self, gid: &Gid) -> Result<(), DbError>;
    fn rollback_prepared(&mut self, gid: &Gid) -> Result<(), DbError>;
    /// The gids of `participant` prepared in this database, awaiting a decision.
    fn recover(&mut self, participant: &str) -> Result<Vec<Gid>, DbError>;
    /// The connection cannot be used again (it is dropped instead of pooled).
    fn is_broken(&self) -> bool;

    /// Ends every other session of this database that carries the name `session` (see
    /// [`session_name`]: a previous incarnation's pool, whose process died) and waits, at most
    /// `wait`, until they are gone. Run before the recovery scan: a statement such a session
    /// still runs (a one-shot waiting on a row lock) could otherwise reach its PREPARE after
    /// the scan, leaving a prepared transaction nobody resolves. A transaction that prepared
    /// before survives its session and is in the scan; one that had not is rolled back by
    /// the server when its session ends. Returns how many sessions it ended.
    fn fence_sessions(&mut self, session: &str, wait: Duration) -> Result<usize, DbError>;

    /// A one-shot transaction whole: `begin`, `ops` in order, then `prepare` when one of
    /// them writes or `hold_reads` (the transaction has other participants: its read locks
    /// must last until the decision, or another transaction could write what it read here
    /// before it took its locks elsewhere), else `rollback` (nothing to hold). On failure
    /// nothing is left open; a failure with `Reason::ConnectionLost` leaves it unknown
    /// whether it prepared. The default makes the calls one by one; a backend may send them
    /// in one round trip, as long as it fails the same way (the op that failed, the same
    /// reason).
    fn one_shot(&mut self, gid: &Gid, ops: &[KvOp], hold_reads: bool) -> Result<OneShot, OneShotFailure> {
        one_shot_by_steps(self, gid, ops, hold_reads)
    }
}

/// What a one-shot transaction did: each op's outcome, in order, and whether it is now
/// prepared under its gid (it wrote, or holds its reads) or already ended (it only read).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OneShot {
    pub outcomes: Vec<KvOutcome>,
    pub prepared: bool,
}

/// Why a one-shot transaction failed: the index of the op the database refused, if it was
/// one (else begin or prepare failed), and the error.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OneShotFailure {
    pub op: Option<usize>,
    pub error: DbError,
}

/// [`Connection::one_shot`] one call at a time.
pub fn one_shot_by_steps<C: Connection + ?Sized>(
    conn: &mut C,
    gid: &Gid,
    ops: &[KvOp],
    hold_reads: bool,
) -> Result<OneShot, OneShotFailure> {
    conn.begin(gid).map_err(|error| OneShotFailure { op: None, error })?;
    let mut outcomes = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        match conn.kv(op) {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => {
                if !conn.is_broken() {
                    let _ = conn.rollback(gid);
                }
                return Err(OneShotFailure { op: Some(index), error });
            }
        }
    }
    let prepares = hold_reads || ops.iter().any(KvOp::writes);
    let ended = if prepares { conn.prepare(gid) } else { conn.rollback(gid) };
    match ended {
        Ok(()) => Ok(OneShot { outcomes, prepared: prepares }),
        Err(error) => {
            if prepares && !conn.is_broken() {
                // A refused PREPARE leaves the transaction open (PostgreSQL) or idle
                // (MariaDB): end it.
                let _ = conn.rollback(gid);
            }
            Err(OneShotFailure { op: None, error })
        }
    }
}

/// Opens connections to one database.
pub trait Connector: Send + Sync + 'static {
    type Conn: Connection;
    fn connect(&self) -> Result<Self::Conn, DbError>;
}

/// The name every pooled session of participant `participant` carries in its database
/// (PostgreSQL's `application_name`, MariaDB's session registry), so that a restarted
/// participant can end its previous incarnation's sessions ([`Connection::fence_sessions`]).
/// At most 9 + 32 bytes (`gid::PARTICIPANT_BYTES_MAX`): under PostgreSQL's 63.
pub fn session_name(participant: &str) -> String {
    format!("twophase:{participant}")
}

/// A gid as an SQL string literal. Gids are `[a-z0-9_:-]` by construction (`Gid::new`),
/// so nothing can escape the quotes; the assert keeps it so.
pub(crate) fn gid_literal(gid: &Gid) -> String {
    let text = gid.to_string();
    assert!(
        text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_:-".contains(&b)),
        "gid {text:?} outside its alphabet"
    );
    format!("'{text}'")
}

/// Parses the gids a database lists, keeping those of `participant`.
pub(crate) fn gids_of<'a>(participant: &str, listed: impl IntoIterator<Item = &'a str>) -> Vec<Gid> {
    let prefix = Gid::prefix_of(participant);
    listed.into_iter().filter(|text| text.starts_with(&prefix)).filter_map(|text| Gid::parse(text).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_keeps_only_this_participants_parseable_gids() {
        let listed = ["tp1:pg1:1:5", "tp1:pg10:1:6", "tp1:pg1:01:7", "someone-else", "tp1:pg1:2:8"];
        let gids = gids_of("pg1", listed);
        assert_eq!(gids, vec![Gid::new("pg1", 1, 5).unwrap(), Gid::new("pg1", 2, 8).unwrap()]);
    }

    #[test]
    fn gid_literal_is_quoted() {
        assert_eq!(gid_literal(&Gid::new("pg1", 3, 4).unwrap()), "'tp1:pg1:3:4'");
    }
}
