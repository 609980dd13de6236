//! A simulated disk holding one node's log: writes are durable only once a sync covering
//! them completes; a crash keeps the synced records, a random prefix of the unsynced ones
//! (writes may reach the platter without a sync), and may tear the last of those.

use bytes::Bytes;
use rand::Rng;

use crate::record::LogRecord;
use crate::types::Lsn;

#[derive(Debug)]
pub(super) struct Disk<R> {
    records: Vec<(Lsn, R)>,
    synced: usize,
    /// Durable records truncated away after a snapshot, kept only for the checker.
    archived: Vec<(Lsn, R)>,
}

/// What a crash did to the unsynced tail.
pub(super) struct CrashLoss {
    pub lost: u64,
    pub torn: bool,
}

impl<R: LogRecord + Clone> Disk<R> {
    pub(super) fn new() -> Disk<R> {
        Disk { records: Vec::new(), synced: 0, archived: Vec::new() }
    }

    pub(super) fn write(&mut self, lsn: Lsn, record: R) {
        if let Some((last, _)) = self.records.last() {
            assert_eq!(lsn, last.next(), "the log must receive consecutive LSNs");
        }
        self.records.push((lsn, record));
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    pub(super) fn has_unsynced(&self) -> bool {
        self.records.len() > self.synced
    }

    /// A sync that began when the log held `upto` records has completed.
    pub(super) fn synced_upto(&mut self, upto: usize) -> Lsn {
        self.synced = self.synced.max(upto);
        self.durable_lsn()
    }

    pub(super) fn sync_all(&mut self) {
        self.synced = self.records.len();
    }

    /// The last durable LSN, also once a truncation has emptied the live records: the real
    /// wal keeps counting across truncations (its active segment names its base LSN), so a
    /// node restarted from a snapshot that covers everything still knows its log is durable
    /// up to there.
    pub(super) fn durable_lsn(&self) -> Lsn {
        match self.synced {
            0 => self.archived.last().map_or(Lsn::NONE, |(lsn, _)| *lsn),
            synced => self.records[synced - 1].0,
        }
    }

    pub(super) fn crash(&mut self, rng: &mut impl Rng, torn_probability: f64) -> CrashLoss {
        let unsynced = self.records.len() - self.synced;
        let mut keep = rng.gen_range(0..=unsynced);
        let torn = keep > 0 && rng.gen_bool(torn_probability);
        if torn {
            keep -= 1; // The last write was torn: its checksum fails and recovery drops it.
        }
        self.records.truncate(self.synced + keep);
        self.synced = self.records.len();
        CrashLoss { lost: (unsynced - keep) as u64, torn }
    }

    /// The durable records, each passed through the binary encoding as the wal would store it.
    pub(super) fn read_back(&self) -> Vec<(Lsn, R)> {
        self.records[..self.synced]
            .iter()
            .map(|(lsn, record)| {
                let mut payload = Vec::new();
                record.encode_payload(&mut payload);
                let decoded = R::decode(record.kind(), Bytes::from(payload)).expect("a record we encoded decodes");
                (*lsn, decoded)
            })
            .collect()
    }

    /// Every record that ever became durable, truncated or not, for the checker.
    pub(super) fn durable_history(&self) -> Vec<(Lsn, R)> {
        self.archived.iter().chain(&self.records[..self.synced]).cloned().collect()
    }

    /// Drops durable records with an LSN below `lsn` (a snapshot covers them).
    pub(super) fn truncate_before(&mut self, lsn: Lsn) {
        let cut = self.records[..self.synced].partition_point(|(record_lsn, _)| *record_lsn < lsn);
        self.archived.extend(self.records.drain(..cut));
        self.synced -= cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PartRecord;
    use crate::types::TxId;

    fn disk_with(records: u64) -> Disk<PartRecord> {
        let mut disk = Disk::new();
        for lsn in 1..=records {
            disk.write(Lsn(lsn), PartRecord::Committed { txid: TxId(lsn) });
        }
        disk
    }

    #[test]
    fn durable_lsn_survives_a_truncation_that_empties_the_log() {
        let mut disk = disk_with(3);
        assert_eq!(disk.durable_lsn(), Lsn::NONE, "nothing synced yet");
        disk.sync_all();
        disk.truncate_before(Lsn(4));
        assert_eq!(disk.len(), 0);
        assert_eq!(disk.durable_lsn(), Lsn(3), "a snapshot covered the log; it is still durable to 3");
        disk.write(Lsn(4), PartRecord::Committed { txid: TxId(4) });
        assert_eq!(disk.durable_lsn(), Lsn(3), "the new record is not synced");
        assert_eq!(disk.synced_upto(1), Lsn(4));
    }

    #[test]
    fn durable_lsn_is_the_last_synced_record_after_a_partial_truncation() {
        let mut disk = disk_with(5);
        disk.synced_upto(4);
        disk.truncate_before(Lsn(3));
        assert_eq!(disk.durable_lsn(), Lsn(4));
    }
}
