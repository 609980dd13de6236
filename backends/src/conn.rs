//! The blocking face every database backend implements: one connection, one transaction at a
//! time. The executor (`pool`) runs these calls on its own threads; nothing here may be
//! called from the engine thread.

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
}

/// Opens connections to one database.
pub trait Connector: Send + Sync + 'static {
    type Conn: Connection;
    fn connect(&self) -> Result<Self::Conn, DbError>;
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
