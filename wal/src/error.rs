use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Lsn;

/// Everything that can go wrong in the log. Cloneable so that one I/O failure can be handed
/// to every waiter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O operation failed. After a write or sync failure the log is failed for good.
    Io {
        /// What was being done, including the file.
        context: String,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The file system is full (ENOSPC or EDQUOT). The log is failed for good.
    DiskFull {
        /// What was being done, including the file.
        context: String,
    },
    /// A record that had been durable is damaged, or the segments do not line up. `open`
    /// refuses to continue: nothing is skipped silently.
    Corrupt {
        /// Segment file holding the first bad byte.
        segment: PathBuf,
        /// Byte offset of the bad record inside `segment`.
        offset: u64,
        /// The LSN the record at `offset` should have carried.
        expected_lsn: Lsn,
        /// Why the record is bad and why it is known to have been durable.
        reason: String,
    },
    /// The payload is larger than the log accepts.
    RecordTooLarge {
        /// Payload length that was offered.
        len: usize,
        /// Largest accepted payload.
        max: usize,
    },
    /// Kind 0 is reserved for the log's own markers.
    ReservedKind,
    /// `wait_durable` was asked about an LSN that was never assigned: it would wait forever.
    NotAppended {
        /// The LSN asked about.
        lsn: Lsn,
        /// The last LSN assigned so far.
        last: Lsn,
    },
    /// Another `Wal` (in this or another process) has the directory open.
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// The options cannot work.
    InvalidOptions(String),
    /// io_uring was requested explicitly but is not usable here.
    Unsupported(String),
    /// The log thread stopped unexpectedly (a bug); nothing further becomes durable.
    WriterStopped,
}

impl WalError {
    /// Wraps an I/O error, classifying a full disk as [`WalError::DiskFull`].
    pub(crate) fn io(context: impl Into<String>, err: io::Error) -> WalError {
        let context = context.into();
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => WalError::DiskFull { context },
            _ => WalError::Io { context, source: Arc::new(err) },
        }
    }

    /// True for [`WalError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::DiskFull { .. })
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { context, source } => write!(f, "wal I/O error while {context}: {source}"),
            WalError::DiskFull { context } => write!(f, "wal disk full while {context}"),
            WalError::Corrupt { segment, offset, expected_lsn, reason } => write!(
                f,
                "wal corruption in segment {} at byte offset {offset} (expected LSN {expected_lsn}): {reason}",
                segment.display()
            ),
            WalError::RecordTooLarge { len, max } => {
                write!(f, "wal record payload of {len} bytes exceeds the maximum of {max}")
            }
            WalError::ReservedKind => write!(f, "wal record kind 0 is reserved for the wal itself"),
            WalError::NotAppended { lsn, last } => {
                write!(f, "wal LSN {lsn} was never appended (last assigned: {last})")
            }
            WalError::Locked { dir } => {
                write!(f, "wal directory {} is already open elsewhere", dir.display())
            }
            WalError::InvalidOptions(s) => write!(f, "invalid wal options: {s}"),
            WalError::Unsupported(s) => write!(f, "wal backend unsupported: {s}"),
            WalError::WriterStopped => write!(f, "wal writer thread stopped unexpectedly"),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(&**source),
            _ => None,
        }
    }
}
