//! `twophase-wal`: the durable log of a twophase node.
//!
//! # What it owns
//!
//! * **Segments**: the log is a directory of files named by the LSN of their first record
//!   (`00000000000000000001.wal`), each preallocated (zero-filled, `fallocate`) to
//!   [`WalOptions::segment_size_bytes`] so that `fdatasync` need not flush size metadata.
//!   A segment is rotated when the next record does not fit. The directory is fsync'd
//!   after a segment is created or deleted. A `LOCK` file (flock) keeps a second `Wal`
//!   out of the directory.
//! * **Framing**: a record is `u32 length | u32 crc32c | u64 lsn | u8 kind | payload`,
//!   little-endian. `length` counts the checksummed bytes (`lsn`, `kind`, `payload`, i.e.
//!   `9 + payload.len()`), so a zero length marks the end of written data in a
//!   preallocated segment. The length is checked against `max_record_bytes` before anything
//!   is read past the header.
//! * **Group commit**: one dedicated writer thread takes everything queued while its
//!   previous write + sync ran and writes it with one write per segment touched and one
//!   `fdatasync` (per segment touched, i.e. one unless the group crosses a segment
//!   boundary), then publishes the new durable LSN (an atomic plus the [`Wal::doorbell`]).
//!   A record appended with [`Wal::append`] starts a group at once when the log is idle;
//!   one appended with [`Wal::append_lazy`] rides with the next group, or is synced on its
//!   own after [`WalOptions::lazy_sync_within`]. While the log is busy (urgent records
//!   arrived during the previous group's write, and until a slot finds no urgent record
//!   waiting) groups start only on the slots of [`WalOptions::busy_group_interval`],
//!   multiples of it on the machine's monotonic clock plus [`WalOptions::busy_group_phase`]
//!   (the same slots in every process, so logs sharing a disk sync together and the
//!   kernel merges their flushes): a device flush is the scarce resource, so under load
//!   fewer, larger groups. Groups are bounded to 4 MiB of records; the rest goes in
//!   the next group. Each group
//!   starts with a small wal-internal marker record (kind 0) that records the durable LSN
//!   before the group; recovery uses it to tell a torn tail from corruption.
//! * **Backends**: io_uring through the `io-uring` crate (the writer thread owns a ring and
//!   submits each group's writes and fdatasyncs as one linked chain) or portable `pwrite` + `fdatasync`; [`Backend::Auto`] probes io_uring at
//!   open and falls back with a warning.
//! * **Recovery**: [`open`] reads every segment forward, verifies every checksum and that
//!   LSNs are consecutive, truncates a torn tail (the last write group partially on disk)
//!   and fails with [`WalError::Corrupt`] on a bad record that had been durable. See
//!   [`recovery`](crate::Recovery) and the rule below.
//! * **Truncation**: [`Wal::truncate_before`] deletes whole old segments so that restart
//!   time stays bounded.
//! * **Statistics**: [`Wal::stats`] shares [`WalStats`]: each group's write + fdatasync
//!   time and its size in records, kept by the writer thread in relaxed atomics (nothing
//!   waits on them).
//! * **Fuzz bodies** (`fuzz_targets`, hidden): the framing and recovery-scan targets shared
//!   by `fuzz/` and the stable random-input harness.
//!
//! # Invariants
//!
//! * A record is durable only after `fdatasync` returned for every byte of it;
//!   [`Wal::durable_lsn`] never runs ahead of that (except with the explicitly unsafe
//!   [`SyncMode::None`]).
//! * LSNs are consecutive: the first record of an empty log is LSN 1, every append gets the
//!   next one, recovery checks it. LSN 0 means "none".
//! * A failed write or fsync is never retried: the log enters a failed state and every
//!   caller (`append`, `durable_lsn`, `wait_durable`, `close`) gets the error from then on
//!   (PostgreSQL's fsync lesson: after a failed fsync the page cache cannot be trusted).
//!   A full disk is reported as [`WalError::DiskFull`]. I/O errors never panic and never
//!   leave a waiter hanging.
//! * Every queue is bounded: appends block while more than `max_pending_bytes` are queued
//!   but unwritten; the doorbell holds one token.
//!
//! # Torn tail or corruption
//!
//! Recovery stops at the first point `P` that is not a valid, consecutive record and looks
//! at every byte after `P` (rest of the segment, all later segments) for a valid group
//! marker saying that an LSN `>=` the one expected at `P` was durable. Such a marker can
//! only have been written after the record at `P` had been synced, so the record was
//! durable and damaged: corruption, `open` fails naming segment, offset, expected LSN and
//! reason. No such marker: `P` is in the last write group, which a crash may have cut:
//! torn tail, zeroed and synced, later segments deleted, [`Recovery::truncated_tail`]
//! says what was dropped. Limit: damage inside the last group of a log whose process was
//! killed looks exactly like a torn write and is truncated; a clean [`Wal::close`] writes a
//! final marker so that a closed log has no unprotected group, and the first group after
//! `open` protects everything recovered.
//!
//! # What it must not do
//!
//! It stores opaque bytes: it never interprets payloads and knows nothing of the
//! two-phase-commit protocol. Record kinds other than 0 are the caller's business.

mod error;
mod frame;
#[doc(hidden)]
pub mod fuzz_targets;
mod io;
mod recovery;
mod segment;
mod stats;
mod timing;
mod wal;

use std::fmt;
use std::path::PathBuf;

pub use error::WalError;
pub use recovery::{Damage, Inspection, inspect};
pub use stats::{Histogram as WalHistogram, WalStats};
pub use wal::{CrashPoint, Wal, open};

/// Log sequence number. LSN 0 means "none"; the first record of an empty log is LSN 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// "No record".
    pub const NONE: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which I/O backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring if the kernel allows it, else portable (with a `tracing` warning).
    #[default]
    Auto,
    /// io_uring or fail at open.
    IoUring,
    /// pwrite + fdatasync.
    Portable,
}

/// The backend actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring (a linked write + fdatasync chain per group).
    IoUring,
    /// pwrite + fdatasync.
    Portable,
}

/// Whether groups are synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` after each group: records are durable when reported so.
    #[default]
    Fdatasync,
    /// **Unsafe**: no sync at all. "Durable" then only means "handed to the kernel"; a
    /// power loss or kernel crash loses acknowledged records. Only for
    /// `--unsafe-no-fsync` measurements, never for real use.
    None,
}

/// Options for [`open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size each segment is preallocated to (default 64 MiB, at least 4 KiB).
    pub segment_size_bytes: u64,
    /// I/O backend (default `Auto`).
    pub backend: Backend,
    /// Largest payload accepted (default 16 MiB). Also capped so that a record fits in a
    /// segment. Recovery rejects longer length fields as damage.
    pub max_record_bytes: u32,
    /// Bound on queued-but-unwritten bytes; `append` blocks beyond it (default 64 MiB).
    pub max_pending_bytes: usize,
    /// Sync policy (default `Fdatasync`).
    pub sync: SyncMode,
    /// How long the writer busy-waits for more records before sleeping (default zero).
    /// Spinning trims wake-up latency on an idle core; on a crowded machine it only steals
    /// CPU from the threads producing the records, so it is off unless asked for.
    pub writer_spin: std::time::Duration,
    /// Longest a record appended with [`Wal::append_lazy`] waits for a group (default 10 ms).
    pub lazy_sync_within: std::time::Duration,
    /// While the log is busy (urgent records arrived during the previous group's write, or
    /// the previous group waited for its slot with urgent records queued), groups start only
    /// on multiples of this interval on the monotonic clock (plus `busy_group_phase`), at
    /// least half an interval after the previous group (default zero: never held back).
    /// Caps the flush rate under load and lines up the flushes of logs on one machine; a
    /// lone record on an idle log is never held back.
    pub busy_group_interval: std::time::Duration,
    /// Where the busy slots sit: at `busy_group_phase` past the multiples of
    /// `busy_group_interval` on the monotonic clock (default zero). Logs whose records
    /// follow another log's flush (a coordinator's after its participants') can sit later
    /// in the interval than it.
    pub busy_group_phase: std::time::Duration,
    /// **Test hook** (crash tests of the process that owns the log): write this many groups
    /// of records whole, then write only part of the next group's bytes (no sync) and kill
    /// the process with SIGKILL, leaving a torn tail for recovery to cut. Default `None`.
    pub crash_mid_group_after: Option<u64>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: 64 << 20,
            backend: Backend::Auto,
            max_record_bytes: 16 << 20,
            max_pending_bytes: 64 << 20,
            sync: SyncMode::Fdatasync,
            writer_spin: std::time::Duration::ZERO,
            lazy_sync_within: std::time::Duration::from_millis(10),
            busy_group_interval: std::time::Duration::ZERO,
            busy_group_phase: std::time::Duration::ZERO,
            crash_mid_group_after: None,
        }
    }
}

/// What [`open`] found on disk.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Every record still in the log (from the oldest retained segment on), in LSN order.
    /// The wal's own markers are not included.
    pub records: Vec<RecoveredRecord>,
    /// LSN the next append will get.
    pub next_lsn: Lsn,
    /// Set if a torn tail was cut off.
    pub truncated_tail: Option<TornTail>,
}

/// One recovered record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRecord {
    /// Its LSN.
    pub lsn: Lsn,
    /// The caller's kind byte (never 0).
    pub kind: u8,
    /// The payload, exactly as appended.
    pub payload: bytes::Bytes,
}

/// A torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment holding the first dropped byte.
    pub segment: PathBuf,
    /// Offset of the first dropped byte in `segment`.
    pub offset: u64,
    /// Non-zero bytes dropped (in `segment` and in deleted later segments).
    pub bytes_dropped: u64,
}

/// Test support: frame encoding, for tests that forge torn writes.
#[doc(hidden)]
pub mod testing {
    /// Encodes one record frame.
    pub fn encode_frame(buf: &mut Vec<u8>, lsn: u64, kind: u8, payload: &[u8]) {
        crate::frame::encode_into(buf, lsn, kind, payload, None);
    }
    /// Encodes a group marker for a group whose first LSN is `first_lsn`.
    pub fn encode_marker(buf: &mut Vec<u8>, first_lsn: u64) {
        crate::frame::encode_marker(buf, first_lsn);
    }
}

#[cfg(test)]
mod tests;

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Wal>();
};
