//! A replica's simulated disk: a [`RecordLog`] whose records survive a crash only once
//! synced. The world decides when a sync starts and completes (and whether it fails); the
//! replica's storage writes through a handle to the same disk.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use twophase_replica::{RecordLog, ReplicaError};
use twophase_wal::{Lsn, RecoveredRecord};

/// What is on one replica's disk.
#[derive(Debug, Default)]
pub(crate) struct DiskState {
    /// Records still in the log, in LSN order (the synced ones first).
    records: Vec<RecoveredRecord>,
    /// LSN of the last synced record (0: none).
    synced: Lsn,
    /// LSN the next append gets.
    next_lsn: u64,
}

/// A handle on a shared simulated disk (the replica's storage holds one, the world another).
#[derive(Clone, Debug, Default)]
pub(crate) struct SimDisk(Rc<RefCell<DiskState>>);

impl SimDisk {
    pub(crate) fn new() -> SimDisk {
        SimDisk(Rc::new(RefCell::new(DiskState { records: Vec::new(), synced: Lsn::NONE, next_lsn: 1 })))
    }

    /// LSN of the last record written (synced or not).
    pub(crate) fn last_lsn(&self) -> Lsn {
        Lsn(self.0.borrow().next_lsn - 1)
    }

    pub(crate) fn has_unsynced(&self) -> bool {
        let disk = self.0.borrow();
        disk.synced.0 + 1 < disk.next_lsn
    }

    /// A sync that started when `upto` was the last record completed.
    pub(crate) fn synced_upto(&self, upto: Lsn) {
        let mut disk = self.0.borrow_mut();
        disk.synced = disk.synced.max(upto);
    }

    /// A crash: what was not synced is gone. Returns how many records were lost.
    pub(crate) fn crash(&self) -> usize {
        let mut disk = self.0.borrow_mut();
        let synced = disk.synced;
        let before = disk.records.len();
        disk.records.retain(|r| r.lsn <= synced);
        disk.next_lsn = synced.0 + 1;
        before - disk.records.len()
    }

    /// What a restart reads back: the records in LSN order, and the next LSN.
    pub(crate) fn read_back(&self) -> (Vec<RecoveredRecord>, Lsn) {
        let disk = self.0.borrow();
        (disk.records.clone(), Lsn(disk.next_lsn))
    }

    fn push(&mut self, kind: u8, payload: &[u8]) -> Lsn {
        let mut disk = self.0.borrow_mut();
        let lsn = Lsn(disk.next_lsn);
        disk.next_lsn += 1;
        disk.records.push(RecoveredRecord { lsn, kind, payload: Bytes::copy_from_slice(payload) });
        lsn
    }
}

impl RecordLog for SimDisk {
    fn append(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, ReplicaError> {
        Ok(self.push(kind, payload))
    }

    fn append_lazy(&mut self, kind: u8, payload: &[u8]) -> Result<Lsn, ReplicaError> {
        // The world syncs whatever is unsynced; a lazy record merely starts no sync itself
        // in the wal, and losing it in a crash is allowed either way.
        Ok(self.push(kind, payload))
    }

    fn durable_lsn(&self) -> Result<Lsn, ReplicaError> {
        Ok(self.0.borrow().synced)
    }

    fn truncate_before(&mut self, lsn: Lsn) -> Result<(), ReplicaError> {
        // Only records covered by a durable snapshot: all of them synced.
        let mut disk = self.0.borrow_mut();
        assert!(lsn.0 <= disk.synced.0 + 1, "truncating before {lsn:?}, beyond the synced {:?}", disk.synced);
        disk.records.retain(|r| r.lsn >= lsn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_exactly_the_synced_records() {
        let mut disk = SimDisk::new();
        let a = disk.append(1, b"a").unwrap();
        disk.synced_upto(a);
        disk.append(1, b"b").unwrap();
        assert!(disk.has_unsynced());
        assert_eq!(disk.crash(), 1);
        let (records, next) = disk.read_back();
        assert_eq!(records.iter().map(|r| &r.payload[..]).collect::<Vec<_>>(), vec![&b"a"[..]]);
        assert_eq!(next, Lsn(2), "the lost record's LSN is reused");
        assert_eq!(disk.durable_lsn().unwrap(), a);
    }
}
