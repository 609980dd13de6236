//! Snapshot files: a participant's `snapshot.bin` and a coordinator's `checkpoint.bin` in
//! the data directory, replaced atomically (write a temporary file, fsync, rename, fsync
//! the directory), written on a thread of their own, after which the log before them is
//! truncated. Layout: `magic (8 bytes) | u32 crc32c(body) | u64 body length | body` (body:
//! the engine's encoding).
//!
//! Invariant: a snapshot is handed to the writer only once the log is durable up to its
//! LSN, and the log is truncated only after the file is durable, so at every moment the
//! snapshot on disk plus the log on disk hold the whole state.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use prometheus_client::encoding::DescriptorEncoder;
use twophase_engine::Lsn;
use twophase_engine::codec::DecodeError;
use twophase_engine::coordinator::CoordinatorSnapshot;
use twophase_engine::participant::ParticipantSnapshot;
use twophase_wal::{Lsn as WalLsn, Wal};

use crate::metrics::histogram::LatencyHistogram;

const HEADER: usize = 8 + 4 + 8;

/// What a node snapshots: the engine's encoding plus where the file lives.
pub trait SnapshotFile: Sized + Send + 'static {
    const FILE_NAME: &'static str;
    const MAGIC: &'static [u8; 8];
    fn lsn(&self) -> Lsn;
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: Bytes) -> Result<Self, DecodeError>;
    /// A few words for the log line once written.
    fn describe(&self) -> String;
}

impl SnapshotFile for ParticipantSnapshot {
    const FILE_NAME: &'static str = "snapshot.bin";
    const MAGIC: &'static [u8; 8] = b"2PCSNAP1";
    fn lsn(&self) -> Lsn {
        self.lsn
    }
    fn encode(&self) -> Vec<u8> {
        ParticipantSnapshot::encode(self)
    }
    fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        ParticipantSnapshot::decode(bytes)
    }
    fn describe(&self) -> String {
        format!("{} keys, {} prepared", self.kv.len(), self.prepared.len())
    }
}

impl SnapshotFile for CoordinatorSnapshot {
    const FILE_NAME: &'static str = "checkpoint.bin";
    const MAGIC: &'static [u8; 8] = b"2PCCKPT1";
    fn lsn(&self) -> Lsn {
        self.lsn
    }
    fn encode(&self) -> Vec<u8> {
        CoordinatorSnapshot::encode(self)
    }
    fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        CoordinatorSnapshot::decode(bytes)
    }
    fn describe(&self) -> String {
        format!("{} client sessions, {} unfinished commits", self.sessions.len(), self.unfinished.len())
    }
}

pub fn path<S: SnapshotFile>(data_dir: &Path) -> PathBuf {
    data_dir.join(S::FILE_NAME)
}

/// Reads the snapshot, if there is one. A damaged snapshot is an error, never ignored: the
/// log before it may be gone.
pub fn load<S: SnapshotFile>(data_dir: &Path) -> anyhow::Result<Option<S>> {
    let path = path::<S>(data_dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    if bytes.len() < HEADER || &bytes[..8] != S::MAGIC {
        bail!("{} is not a twophase snapshot (bad header)", path.display());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let length = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let body = &bytes[HEADER..];
    if body.len() as u64 != length {
        bail!("{} is damaged: body is {} bytes, header says {length}", path.display(), body.len());
    }
    if crc32c::crc32c(body) != crc {
        bail!("{} is damaged: checksum mismatch", path.display());
    }
    let snapshot = S::decode(Bytes::copy_from_slice(body)).with_context(|| format!("{} is damaged", path.display()))?;
    Ok(Some(snapshot))
}

/// Writes `snapshot` durably in place of the previous one.
pub fn store<S: SnapshotFile>(data_dir: &Path, snapshot: &S) -> anyhow::Result<()> {
    let body = snapshot.encode();
    let tmp = data_dir.join(format!("{}.tmp", S::FILE_NAME));
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(S::MAGIC)?;
    file.write_all(&crc32c::crc32c(&body).to_le_bytes())?;
    file.write_all(&(body.len() as u64).to_le_bytes())?;
    file.write_all(&body)?;
    file.sync_all().with_context(|| format!("fsync of {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path::<S>(data_dir)).context("installing the snapshot")?;
    File::open(data_dir)?.sync_all().context("fsync of the data directory")?;
    Ok(())
}

/// Checks that the log continues where the snapshot ends (a gap means lost records).
pub fn check_log_continues(snapshot_lsn: Lsn, first_log_lsn: Option<Lsn>) -> anyhow::Result<()> {
    if let Some(first) = first_log_lsn
        && first.0 > snapshot_lsn.0 + 1
    {
        bail!(
            "the log starts at LSN {} but the snapshot covers only up to {}: records are missing",
            first.0,
            snapshot_lsn.0
        );
    }
    Ok(())
}

/// What the snapshot thread did, for metrics (written by that thread only).
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub written: AtomicU64,
    pub failed: AtomicU64,
    /// How long writing each file took (encode, write, fsync, rename).
    pub duration: Mutex<LatencyHistogram>,
}

impl SnapshotStats {
    fn record(&self, started: Instant, result: &anyhow::Result<()>) {
        let count = if result.is_ok() { &self.written } else { &self.failed };
        count.fetch_add(1, Ordering::Relaxed);
        self.duration.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).observe(started.elapsed());
    }

    /// `twophase_snapshots_total{result}` and `twophase_snapshot_seconds`.
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let help = "Snapshots (participant) or checkpoints (coordinator) written or failed";
        let counts =
            [("written", self.written.load(Ordering::Relaxed)), ("failed", self.failed.load(Ordering::Relaxed))];
        crate::metrics::encode::counters(encoder, "twophase_snapshots", help, "result", counts)?;
        let duration = *self.duration.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let help = "How long writing a snapshot or checkpoint file took (encode, write, fsync, rename)";
        crate::metrics::encode::histogram(encoder, "twophase_snapshot_seconds", help, &duration)
    }
}

/// Writes snapshots on a thread of its own, then lets the log drop what they cover.
pub struct Snapshotter<S: SnapshotFile> {
    queue: Sender<S>,
    thread: std::thread::JoinHandle<()>,
    stats: Arc<SnapshotStats>,
}

impl<S: SnapshotFile> Snapshotter<S> {
    pub fn spawn(data_dir: PathBuf, wal: std::sync::Arc<Wal>) -> Snapshotter<S> {
        let (queue, jobs) = crossbeam_channel::bounded(1);
        let stats = Arc::new(SnapshotStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || write_snapshots(&data_dir, &wal, jobs, &thread_stats))
            .expect("spawning the snapshot thread");
        Snapshotter { queue, thread, stats }
    }

    /// Finishes the snapshot being written, if any, and stops the thread.
    pub fn shutdown(self) {
        drop(self.queue);
        if self.thread.join().is_err() {
            tracing::error!("the snapshot thread panicked");
        }
    }

    /// Hands over a snapshot whose LSN is durable. Returns false when the previous one is
    /// still being written (this one is dropped; a later one will do).
    pub fn submit(&self, snapshot: S) -> bool {
        match self.queue.try_send(snapshot) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => panic!("the snapshot thread died"),
        }
    }
}

fn write_snapshots<S: SnapshotFile>(data_dir: &Path, wal: &Wal, jobs: Receiver<S>, stats: &SnapshotStats) {
    for snapshot in jobs {
        let lsn = snapshot.lsn();
        let started = Instant::now();
        let stored = store(data_dir, &snapshot);
        stats.record(started, &stored);
        if let Err(err) = stored {
            // The old snapshot and the full log are intact; keep serving and try again later.
            tracing::error!("{} at LSN {} failed: {err:#}", S::FILE_NAME, lsn.0);
            continue;
        }
        tracing::info!(lsn = lsn.0, "{} written: {}", S::FILE_NAME, snapshot.describe());
        if let Err(err) = wal.truncate_before(WalLsn(lsn.0 + 1)) {
            tracing::error!("truncating the log after a snapshot failed: {err}");
        }
    }
}

/// When to snapshot (every `every_records` log records; 0 never), and the snapshot waiting
/// for its LSN to become durable before it may be written.
pub struct SnapshotPolicy<S: SnapshotFile> {
    every_records: u64,
    last_lsn: Lsn,
    pending: Option<S>,
    writer: Snapshotter<S>,
}

impl<S: SnapshotFile> SnapshotPolicy<S> {
    pub fn new(every_records: u64, covered: Lsn, writer: Snapshotter<S>) -> SnapshotPolicy<S> {
        SnapshotPolicy { every_records, last_lsn: covered, pending: None, writer }
    }

    /// Called after every step: hands a pending snapshot to the writer once `durable`
    /// covers it, and takes a new one (with `take`) when `appended` is far enough ahead.
    pub fn after_step(&mut self, durable: Lsn, appended: Lsn, take: impl FnOnce() -> S) {
        if let Some(pending) = self.pending.take_if(|snapshot| snapshot.lsn() <= durable) {
            self.writer.submit(pending);
        }
        if self.every_records > 0 && self.pending.is_none() && appended.0 >= self.last_lsn.0 + self.every_records {
            self.last_lsn = appended;
            let snapshot = take();
            debug_assert_eq!(snapshot.lsn(), appended, "a snapshot covers exactly what was appended");
            self.pending = Some(snapshot);
        }
    }

    pub fn shutdown(self) {
        self.writer.shutdown();
    }

    /// What this writer thread and the log's writer measure, for metrics.
    pub fn sources(&self, wal: &Wal) -> crate::metrics::Sources {
        crate::metrics::Sources { snapshots: self.writer.stats.clone(), wal: wal.stats() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twophase_engine::{Epoch, TxId};

    fn snapshot(lsn: u64) -> ParticipantSnapshot {
        ParticipantSnapshot {
            lsn: twophase_engine::Lsn(lsn),
            max_epoch: Epoch(1),
            max_txid_seen: TxId(5),
            kv: twophase_engine::participant::KvImage::from_pairs([(&b"k"[..], &b"v"[..])]),
            prepared: vec![],
        }
    }

    #[test]
    fn snapshots_replace_each_other_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load::<ParticipantSnapshot>(dir.path()).unwrap(), None);
        store(dir.path(), &snapshot(3)).unwrap();
        store(dir.path(), &snapshot(9)).unwrap();
        assert_eq!(load::<ParticipantSnapshot>(dir.path()).unwrap(), Some(snapshot(9)));
        let mut bytes = fs::read(path::<ParticipantSnapshot>(dir.path())).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(path::<ParticipantSnapshot>(dir.path()), &bytes).unwrap();
        assert!(load::<ParticipantSnapshot>(dir.path()).unwrap_err().to_string().contains("checksum"));
        fs::write(path::<ParticipantSnapshot>(dir.path()), b"junk").unwrap();
        assert!(load::<ParticipantSnapshot>(dir.path()).unwrap_err().to_string().contains("not a twophase snapshot"));
        // A coordinator checkpoint is its own file; a participant snapshot is not one.
        assert_eq!(load::<CoordinatorSnapshot>(dir.path()).unwrap(), None);
    }
}
