//! `WalStorage`: raft-rs's `Storage` on our wal. Entries, hard state and snapshots are wal
//! records (see `codec`); the entries since the last snapshot are kept in memory (the cache
//! Raft reads), rebuilt on open by replaying the records in LSN order.
//!
//! Writes go to the wal and to the cache at once (Raft may read an entry before it is
//! durable, as raft-rs's asynchronous persistence allows); the caller tells Raft an entry is
//! persisted only once the wal's durable LSN passed the LSN returned here.

use std::collections::VecDeque;
use std::path::Path;

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use twophase_wal::{Lsn, RecoveredRecord, Wal, WalOptions};

use crate::codec;
use crate::error::ReplicaError;
use crate::record_log::RecordLog;

/// One cached entry and the LSN of the wal record that holds it.
struct CachedEntry {
    entry: Entry,
    lsn: Lsn,
}

/// Log truncation waiting for the snapshot record that makes it safe to become durable.
#[derive(Debug, Clone, Copy)]
struct PendingTruncation {
    /// The snapshot (and hard state) records that must be durable first.
    durable_after: Lsn,
    /// Every record before this LSN is covered by the snapshot.
    truncate_before: Lsn,
}

/// raft-rs `Storage` whose records live in a twophase wal (or, in the group simulator, in
/// any other [`RecordLog`]).
pub struct WalStorage<L: RecordLog = Wal> {
    log: L,
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot, with its data (index 0: none yet).
    snapshot: Snapshot,
    /// Entries after `snapshot`'s index, consecutive.
    entries: VecDeque<CachedEntry>,
    /// Largest payload of one wal record (entries are split across records below it).
    record_bytes_max: usize,
    /// LSN of the last record appended (0: none since open).
    last_lsn: Lsn,
    /// LSN of the last record appended that something waits for (all but commit-only hard
    /// states): durable this far, every such record is.
    last_urgent_lsn: Lsn,
    pending_truncation: Option<PendingTruncation>,
}

impl WalStorage<Wal> {
    /// Opens (or creates) the log in `dir` and rebuilds the cache from its records. A fresh
    /// log starts with `voters` as its configuration (every replica of a group must be given
    /// the same voters).
    pub fn open(dir: &Path, options: WalOptions, voters: &[u64]) -> Result<WalStorage, ReplicaError> {
        let record_bytes_max = options.max_record_bytes as usize;
        let (wal, recovery) = twophase_wal::open(dir, options)?;
        WalStorage::recover(wal, recovery.next_lsn, &recovery.records, record_bytes_max, voters)
    }

    /// The wal itself (its doorbell, `on_durable`, stats).
    pub fn wal(&self) -> &Wal {
        &self.log
    }
}

impl<L: RecordLog> WalStorage<L> {
    /// Rebuilds the storage from the records `log` held at open (in LSN order; `next_lsn` is
    /// the LSN its next append gets). Records are split below `record_bytes_max` bytes.
    pub fn recover(
        log: L,
        next_lsn: Lsn,
        records: &[RecoveredRecord],
        record_bytes_max: usize,
        voters: &[u64],
    ) -> Result<WalStorage<L>, ReplicaError> {
        let mut storage = WalStorage {
            log,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: Snapshot::default(),
            entries: VecDeque::new(),
            record_bytes_max,
            last_lsn: Lsn(next_lsn.0.saturating_sub(1)),
            last_urgent_lsn: Lsn(next_lsn.0.saturating_sub(1)),
            pending_truncation: None,
        };
        storage.conf_state.voters = voters.to_vec();
        storage.snapshot.mut_metadata().set_conf_state(storage.conf_state.clone());
        for record in records {
            storage.replay(record.lsn, record.kind, &record.payload)?;
        }
        storage.check_recovered()?;
        Ok(storage)
    }

    fn replay(&mut self, lsn: Lsn, kind: u8, payload: &[u8]) -> Result<(), ReplicaError> {
        match kind {
            codec::KIND_ENTRIES => {
                let entries = codec::decode_entries(payload)?;
                self.replay_entries(entries, lsn)
            }
            codec::KIND_HARD_STATE => {
                self.hard_state = codec::decode_hard_state(payload)?;
                Ok(())
            }
            codec::KIND_SNAPSHOT => {
                let snapshot = codec::decode_snapshot(payload)?;
                self.adopt_recovered_snapshot(snapshot);
                Ok(())
            }
            other => Err(ReplicaError::Corrupt(format!("unknown record kind {other} at LSN {lsn}"))),
        }
    }

    /// Entries found in the log. Records before a truncation point may be gone, so the first
    /// run may start anywhere; after that runs must touch or overlap what is cached.
    fn replay_entries(&mut self, entries: Vec<Entry>, lsn: Lsn) -> Result<(), ReplicaError> {
        let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
        let known_base = self.snapshot.get_metadata().index > 0 || !self.entries.is_empty();
        if known_base && first > self.last_index_cached() + 1 {
            return Err(ReplicaError::Corrupt(format!(
                "entries from {first} at LSN {lsn} leave a gap after {}",
                self.last_index_cached()
            )));
        }
        self.splice(entries, lsn);
        Ok(())
    }

    /// After replay: the cache must start right after the snapshot, the hard state must
    /// point inside the log.
    fn check_recovered(&self) -> Result<(), ReplicaError> {
        let snapshot_index = self.snapshot.get_metadata().index;
        if let Some(first) = self.entries.front()
            && first.entry.index != snapshot_index + 1
        {
            return Err(ReplicaError::Corrupt(format!(
                "entries start at {} but the snapshot covers up to {snapshot_index}",
                first.entry.index
            )));
        }
        if self.hard_state.commit > self.last_index_cached() {
            return Err(ReplicaError::Corrupt(format!(
                "hard state commits {} but the log ends at {}",
                self.hard_state.commit,
                self.last_index_cached()
            )));
        }
        Ok(())
    }

    /// Puts entries into the cache, replacing any cached entry at or after the first one's
    /// index (Raft's overwrite of a conflicting suffix); entries the snapshot covers are
    /// skipped.
    fn splice(&mut self, entries: Vec<Entry>, lsn: Lsn) {
        let snapshot_index = self.snapshot.get_metadata().index;
        let mut entries = entries.into_iter().filter(|e| e.index > snapshot_index).peekable();
        let Some(first) = entries.peek().map(|e| e.index) else { return };
        while self.entries.back().is_some_and(|c| c.entry.index >= first) {
            self.entries.pop_back();
        }
        if self.entries.back().is_some_and(|c| c.entry.index + 1 != first) {
            // Only reachable while replaying a log whose head was truncated: the new run
            // replaces what could not be connected.
            self.entries.clear();
        }
        self.entries.extend(entries.map(|entry| CachedEntry { entry, lsn }));
    }

    /// A snapshot record met while replaying. The entries cached then were cached when it
    /// was written, and those after its index were kept then (consistent with it), except
    /// what the truncation it allowed removed: when that cut fell right after its index, the
    /// entry there is gone but those after it are still the kept ones. (Without this, the
    /// entries after a snapshot were dropped and the next record left a gap: found by the
    /// group simulator, whose disk truncates at the exact record.)
    fn adopt_recovered_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        if self.cached(index).is_none() && self.entries.front().is_some_and(|c| c.entry.index == index + 1) {
            self.conf_state = snapshot.get_metadata().get_conf_state().clone();
            self.hard_state.commit = self.hard_state.commit.max(index);
            self.hard_state.term = self.hard_state.term.max(snapshot.get_metadata().term);
            self.snapshot = snapshot;
            return;
        }
        self.adopt_snapshot(snapshot);
    }

    /// Makes `snapshot` the base of the log: cached entries it covers are dropped (all of
    /// them if the snapshot's entry is not the one cached at its index).
    fn adopt_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        let consistent = self.cached(meta.index).is_some_and(|c| c.entry.term == meta.term);
        if consistent {
            while self.entries.front().is_some_and(|c| c.entry.index <= meta.index) {
                self.entries.pop_front();
            }
        } else {
            self.entries.clear();
        }
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.snapshot = snapshot;
    }

    fn cached(&self, index: u64) -> Option<&CachedEntry> {
        let first = self.entries.front()?.entry.index;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    fn last_index_cached(&self) -> u64 {
        match self.entries.back() {
            Some(c) => c.entry.index,
            None => self.snapshot.get_metadata().index,
        }
    }

    /// Appends Raft's new entries (one `Ready`'s), splitting them into records below the
    /// wal's record limit. Returns the LSN of the last record written.
    pub fn append_entries(&mut self, entries: &[Entry]) -> Result<Lsn, ReplicaError> {
        let mut start = 0;
        while start < entries.len() {
            let end = self.run_end(entries, start)?;
            let lsn = self.log.append(codec::KIND_ENTRIES, &codec::encode_entries(&entries[start..end]))?;
            self.last_lsn = lsn;
            self.last_urgent_lsn = lsn;
            self.splice(entries[start..end].to_vec(), lsn);
            start = end;
        }
        Ok(self.last_lsn)
    }

    /// End (exclusive) of the longest run from `start` that fits in one record.
    fn run_end(&self, entries: &[Entry], start: usize) -> Result<usize, ReplicaError> {
        let mut bytes = 4;
        let mut end = start;
        while end < entries.len() {
            let more = codec::entry_record_bytes(&entries[end]);
            if bytes + more > self.record_bytes_max {
                break;
            }
            bytes += more;
            end += 1;
        }
        if end == start {
            return Err(ReplicaError::Config(format!(
                "entry {} does not fit in a wal record of {} bytes",
                entries[start].index, self.record_bytes_max
            )));
        }
        Ok(end)
    }

    /// Records a new hard state. `must_sync` (term or vote changed) starts a group at once;
    /// a commit-only change rides with the next group: Raft allows losing it.
    pub fn set_hard_state(&mut self, hs: &HardState, must_sync: bool) -> Result<Lsn, ReplicaError> {
        let payload = codec::encode_hard_state(hs);
        let lsn = if must_sync {
            let lsn = self.log.append(codec::KIND_HARD_STATE, &payload)?;
            self.last_urgent_lsn = lsn;
            lsn
        } else {
            self.log.append_lazy(codec::KIND_HARD_STATE, &payload)?
        };
        self.hard_state = hs.clone();
        self.last_lsn = lsn;
        Ok(lsn)
    }

    /// Installs a snapshot received from the leader: written, then made the log's base
    /// (every older record becomes unneeded once it is durable). Returns its LSN.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<Lsn, ReplicaError> {
        let lsn = self.write_snapshot(&snapshot)?;
        self.adopt_snapshot(snapshot);
        let hs_lsn = self.set_hard_state(&self.hard_state.clone(), true)?;
        let truncate_before = self.entries.front().map_or(lsn, |c| c.lsn.min(lsn));
        self.pending_truncation = Some(PendingTruncation { durable_after: hs_lsn, truncate_before });
        Ok(hs_lsn)
    }

    /// Compacts the log up to `index` (applied by the application, whose state there is
    /// `data`): a snapshot record, then every record holding only entries up to `index` is
    /// dropped once that record is durable.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<Lsn, ReplicaError> {
        let term = self.term(index).map_err(ReplicaError::Raft)?;
        let mut snapshot = Snapshot { data: data.into(), ..Snapshot::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.install_snapshot(snapshot)
    }

    fn write_snapshot(&mut self, snapshot: &Snapshot) -> Result<Lsn, ReplicaError> {
        let payload = codec::encode_snapshot(snapshot);
        if payload.len() > self.record_bytes_max {
            return Err(ReplicaError::Config(format!(
                "snapshot of {} bytes exceeds the wal record limit {}",
                payload.len(),
                self.record_bytes_max
            )));
        }
        let lsn = self.log.append(codec::KIND_SNAPSHOT, &payload)?;
        self.last_lsn = lsn;
        self.last_urgent_lsn = lsn;
        Ok(lsn)
    }

    /// Drops the wal segments a durable snapshot covers.
    pub fn truncate_if_durable(&mut self, durable: Lsn) -> Result<(), ReplicaError> {
        if let Some(p) = self.pending_truncation
            && durable >= p.durable_after
        {
            self.log.truncate_before(p.truncate_before)?;
            self.pending_truncation = None;
        }
        Ok(())
    }

    /// The wal's durable LSN (its failure, forever, once it failed).
    pub fn durable_lsn(&self) -> Result<Lsn, ReplicaError> {
        self.log.durable_lsn()
    }

    /// LSN of the last record appended (0 if none since open and the log was empty).
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// LSN of the last record something waits for: once it is durable, every Ready handed
    /// to the wal so far is persisted (commit-only hard states may still be in flight).
    pub fn last_urgent_lsn(&self) -> Lsn {
        self.last_urgent_lsn
    }

    /// The record log itself.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The latest snapshot (index 0: none).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The recorded hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Entries cached in memory (those after the latest snapshot).
    pub fn cached_entries(&self) -> usize {
        self.entries.len()
    }
}

impl<L: RecordLog> Storage for WalStorage<L> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot.get_metadata().index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index_cached() + 1, "entries [{low}, {high}) past the log's end");
        let max_bytes = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut bytes = 0u64;
        for index in low..high {
            let entry = &self.cached(index).expect("cached entries are consecutive").entry;
            bytes += protobuf::Message::compute_size(entry) as u64;
            // At least one entry, as raft-rs's own storage does.
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if index == meta.index {
            return Ok(meta.term);
        }
        if index < meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.cached(index) {
            Some(c) => Ok(c.entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot.get_metadata().index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_cached())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Raft asks for a follower behind our first index, which the latest snapshot covers
        // by construction (it is what set the first index). A follower's explicit request
        // for a newer one waits for the next compaction.
        if self.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}
