//! Segment files: naming, listing, creation (preallocated), directory syncs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::WalError;

const SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".wal.tmp";

/// One segment file of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    /// LSN of the first record the segment holds (its name).
    pub first_lsn: u64,
    pub path: PathBuf,
}

/// `00000000000000000001.wal`
pub(crate) fn segment_file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SUFFIX}")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segments of `dir`, oldest first. Leftover temporary files of an interrupted segment
/// creation are removed.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentMeta>, WalError> {
    let ctx = || format!("listing {}", dir.display());
    let mut out = Vec::new();
    let mut removed_tmp = false;
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(ctx(), e))? {
        let entry = entry.map_err(|e| WalError::io(ctx(), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first_lsn) = parse_segment_name(name) {
            out.push(SegmentMeta { first_lsn, path: entry.path() });
        } else if name.ends_with(TMP_SUFFIX) {
            tracing::warn!(file = %entry.path().display(), "removing unfinished segment file");
            fs::remove_file(entry.path())
                .map_err(|e| WalError::io(format!("removing {}", entry.path().display()), e))?;
            removed_tmp = true;
        }
    }
    if removed_tmp {
        sync_dir(dir)?;
    }
    out.sort_by_key(|s| s.first_lsn);
    Ok(out)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(format!("syncing directory {}", dir.display()), e))
}

fn preallocate(file: &File, size: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall wrapper on a valid open descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// Creates segment `first_lsn` preallocated to `size` bytes (zero-filled), made durable with
/// its directory entry before it is returned. Fails rather than replace an existing segment.
pub(crate) fn create_segment(dir: &Path, first_lsn: u64, size: u64) -> Result<(SegmentMeta, File), WalError> {
    let path = dir.join(segment_file_name(first_lsn));
    let tmp = dir.join(format!("{first_lsn:020}{TMP_SUFFIX}"));
    if path.exists() {
        return Err(WalError::io(
            format!("creating segment {}", path.display()),
            io::Error::from(io::ErrorKind::AlreadyExists),
        ));
    }
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| WalError::io(format!("creating {}", tmp.display()), e))?;
        preallocate(&file, size)
            .map_err(|e| WalError::io(format!("preallocating {} bytes for {}", size, tmp.display()), e))?;
        file.sync_all().map_err(|e| WalError::io(format!("syncing new segment {}", tmp.display()), e))?;
        fs::rename(&tmp, &path).map_err(|e| WalError::io(format!("renaming {}", tmp.display()), e))?;
        sync_dir(dir)?;
        Ok(file)
    })();
    match result {
        Ok(file) => Ok((SegmentMeta { first_lsn, path }, file)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub(crate) fn open_segment(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(format!("opening segment {}", path.display()), e))
}

/// Overwrites `[from, to)` of `path` with zeros and syncs it.
pub(crate) fn zero_range(path: &Path, from: u64, to: u64) -> Result<(), WalError> {
    let ctx = || format!("zeroing bytes {from}..{to} of {}", path.display());
    let file = open_segment(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at).map_err(|e| WalError::io(ctx(), e))?;
        at += n as u64;
    }
    file.sync_data().map_err(|e| WalError::io(ctx(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(parse_segment_name("00000000000000000001.wal"), Some(1));
        assert_eq!(parse_segment_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("1.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000x.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000001.wal.tmp"), None);
    }

    #[test]
    fn create_is_preallocated_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, f) = create_segment(dir.path(), 7, 8192).unwrap();
        assert_eq!(meta.first_lsn, 7);
        assert_eq!(f.metadata().unwrap().len(), 8192);
        assert!(create_segment(dir.path(), 7, 8192).is_err());
        fs::write(dir.path().join("00000000000000000009.wal.tmp"), b"x").unwrap();
        let list = list_segments(dir.path()).unwrap();
        assert_eq!(list, vec![meta]);
        assert!(!dir.path().join("00000000000000000009.wal.tmp").exists());
    }
}
