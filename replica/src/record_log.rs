//! `RecordLog`: the append-only record log a replica's storage writes to, with a notion of
//! durability. The binary's is the wal ([`Wal`], fsynced by its writer thread); the group
//! simulator gives a simulated disk that loses what was not synced when it crashes.

use twophase_wal::{Lsn, Wal};

use crate::error::ReplicaError;

/// Where [`crate::WalStorage`] keeps its records. LSNs are assigned in append order and
/// grow by one per record; a record is durable once [`RecordLog::durable_lsn`] reached its
/// LSN, and only then may anything that depends on it leave the process.
pub trait RecordLog {
    /// Appends a record something waits for: its sync starts at once. Returns its LSN.
    fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, ReplicaError>;
    /// Appends a record nothing waits for: it becomes durable with the next sync.
    fn append_lazy(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, ReplicaError>;
    /// Every record up to this LSN is durable (the log's failure, forever, once it failed).
    fn durable_lsn(&self) -> Result<Lsn, ReplicaError>;
    /// Drops records before `lsn` (all of them covered by a durable snapshot).
    fn truncate_before(&mut self, lsn: Lsn) -> Result<(), ReplicaError>;
}

impl RecordLog for Wal {
    fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, ReplicaError> {
        Ok(Wal::append(self, kind, payload)?)
    }

    fn append_lazy(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, ReplicaError> {
        Ok(Wal::append_lazy(self, kind, payload)?)
    }

    fn durable_lsn(&self) -> Result<Lsn, ReplicaError> {
        Ok(Wal::durable_lsn(self)?)
    }

    fn truncate_before(&mut self, lsn: Lsn) -> Result<(), ReplicaError> {
        Ok(Wal::truncate_before(self, lsn)?)
    }
}
