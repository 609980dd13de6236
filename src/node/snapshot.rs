//! Participant snapshot files: `snapshot.bin` in the data directory, replaced atomically
//! (write a temporary file, fsync, rename, fsync the directory). Layout:
//! `b"2PCSNAP1" | u32 crc32c(body) | u64 body length | body` (body: the engine's encoding).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use twophase_engine::participant::ParticipantSnapshot;
use twophase_wal::{Lsn as WalLsn, Wal};

const MAGIC: &[u8; 8] = b"2PCSNAP1";
const HEADER: usize = 8 + 4 + 8;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshot.bin")
}

/// Reads the snapshot, if there is one. A damaged snapshot is an error, never ignored: the
/// log before it may be gone.
pub fn load(data_dir: &Path) -> anyhow::Result<Option<ParticipantSnapshot>> {
    let path = path(data_dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
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
    let snapshot = ParticipantSnapshot::decode(Bytes::copy_from_slice(body))
        .with_context(|| format!("{} is damaged", path.display()))?;
    Ok(Some(snapshot))
}

/// Writes `snapshot` durably in place of the previous one.
pub fn store(data_dir: &Path, snapshot: &ParticipantSnapshot) -> anyhow::Result<()> {
    let body = snapshot.encode();
    let tmp = data_dir.join("snapshot.tmp");
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(MAGIC)?;
    file.write_all(&crc32c::crc32c(&body).to_le_bytes())?;
    file.write_all(&(body.len() as u64).to_le_bytes())?;
    file.write_all(&body)?;
    file.sync_all().with_context(|| format!("fsync of {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path(data_dir)).context("installing the snapshot")?;
    File::open(data_dir)?.sync_all().context("fsync of the data directory")?;
    Ok(())
}

/// Writes snapshots on a thread of its own, then lets the log drop what they cover.
pub struct Snapshotter {
    queue: Sender<ParticipantSnapshot>,
    thread: std::thread::JoinHandle<()>,
}

impl Snapshotter {
    pub fn spawn(data_dir: PathBuf, wal: std::sync::Arc<Wal>) -> Snapshotter {
        let (queue, jobs) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || write_snapshots(&data_dir, &wal, jobs))
            .expect("spawning the snapshot thread");
        Snapshotter { queue, thread }
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
    pub fn submit(&self, snapshot: ParticipantSnapshot) -> bool {
        match self.queue.try_send(snapshot) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => panic!("the snapshot thread died"),
        }
    }
}

fn write_snapshots(data_dir: &Path, wal: &Wal, jobs: Receiver<ParticipantSnapshot>) {
    for snapshot in jobs {
        let lsn = snapshot.lsn;
        if let Err(err) = store(data_dir, &snapshot) {
            // The old snapshot and the full log are intact; keep serving and try again later.
            tracing::error!("snapshot at LSN {} failed: {err:#}", lsn.0);
            continue;
        }
        tracing::info!(lsn = lsn.0, keys = snapshot.kv.len(), "snapshot written");
        if let Err(err) = wal.truncate_before(WalLsn(lsn.0 + 1)) {
            tracing::error!("truncating the log after a snapshot failed: {err}");
        }
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
            kv: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
            prepared: vec![],
        }
    }

    #[test]
    fn snapshots_replace_each_other_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), &snapshot(3)).unwrap();
        store(dir.path(), &snapshot(9)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(snapshot(9)));
        let mut bytes = fs::read(path(dir.path())).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(path(dir.path()), &bytes).unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("checksum"));
        fs::write(path(dir.path()), b"junk").unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("not a twophase snapshot"));
    }
}
