//! The `Wal` handle and its group-commit writer thread.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::error::WalError;
use crate::frame::{self, HEADER_LEN, MARKER_FRAME_LEN, MARKER_KIND, PRECOMPUTE_CRC_FROM};
use crate::io::{IoBackend, Portable, WriteOp};
use crate::recovery;
use crate::segment::{self, SegmentMeta};
use crate::stats::WalStats;
use crate::timing::GroupTiming;
use crate::{Backend, BackendKind, Lsn, Recovery, SyncMode, WalOptions};

/// Upper bound on the bytes of records in one write group; the rest goes in the next group.
pub(crate) const GROUP_MAX_BYTES: usize = 4 << 20;
/// Smallest accepted segment size.
pub(crate) const MIN_SEGMENT_BYTES: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    Running,
    Close,
    Crash,
}

/// Records queued by `append`, encoded, waiting for the writer.
pub(crate) struct Queue {
    pub(crate) buf: Vec<u8>,
    pub(crate) next_lsn: u64,
    /// Bytes appended but not yet written: `buf` plus the writer's unfinished groups.
    pub(crate) unwritten: usize,
    /// `buf` holds a record appended with [`Wal::append`] (not lazy).
    pub(crate) urgent_queued: bool,
    /// When the oldest record in `buf` was appended.
    pub(crate) oldest: Option<Instant>,
    /// The writer is writing a group it took from `buf`.
    pub(crate) writing: bool,
    /// An urgent record was appended while the writer wrote its group: the log is busy.
    pub(crate) urgent_during_write: bool,
    /// How an append must treat the sleeping writer.
    pub(crate) writer: WriterWait,
    pub(crate) stop: StopMode,
}

/// What the writer is waiting for, so that an append wakes it only when that changes
/// what it would do (a wake-up costs tens of microseconds on a VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterWait {
    /// Writing, or about to look at the queue again.
    Awake,
    /// Nothing queued: any append wakes it.
    Idle,
    /// Only lazy records queued: an urgent append wakes it.
    Lazy,
    /// Holding back the next group because the log is busy: nothing wakes it early.
    Busy,
}

#[derive(Debug, Clone, Copy, Default)]
struct DurablePoint {
    lsn: u64,
    segment_first_lsn: u64,
    offset: u64,
}

struct Shared {
    dir: PathBuf,
    queue: Mutex<Queue>,
    /// The writer waits here for work.
    writer_cv: Condvar,
    /// Appenders wait here for room (backpressure).
    space_cv: Condvar,
    durable: AtomicU64,
    appended: AtomicU64,
    failed: AtomicBool,
    abandon: AtomicBool,
    error: OnceLock<WalError>,
    wait_lock: Mutex<()>,
    durable_cv: Condvar,
    doorbell_tx: Sender<()>,
    doorbell_rx: Receiver<()>,
    /// Called after each group becomes durable and on failure (see [`Wal::on_durable`]).
    notify: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// What the writer measured (group write + sync time and size).
    stats: Arc<WalStats>,
    segments: Mutex<Vec<SegmentMeta>>,
    durable_point: Mutex<DurablePoint>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(|e| e.into_inner())
}

fn wait_until<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>, until: Instant) -> MutexGuard<'a, T> {
    let timeout = until.saturating_duration_since(Instant::now());
    cv.wait_timeout(g, timeout).unwrap_or_else(|e| e.into_inner()).0
}

impl Shared {
    fn error(&self) -> Option<WalError> {
        if self.failed.load(Ordering::Acquire) {
            Some(self.error.get().cloned().unwrap_or(WalError::WriterStopped))
        } else {
            None
        }
    }

    /// Enters the failed state for good and wakes everybody who could be waiting.
    fn fail(&self, e: WalError) {
        tracing::error!(error = %e, "wal failed; no further record will become durable");
        let _ = self.error.set(e);
        self.failed.store(true, Ordering::Release);
        drop(lock(&self.queue));
        self.space_cv.notify_all();
        self.wake_durable_waiters();
    }

    /// Tells everyone who waits on the durable LSN (or the failure) to look again:
    /// `wait_durable` callers, the doorbell, the `on_durable` callback.
    fn wake_durable_waiters(&self) {
        drop(lock(&self.wait_lock));
        self.durable_cv.notify_all();
        let _ = self.doorbell_tx.try_send(());
        if let Some(notify) = self.notify.get() {
            notify();
        }
    }

    fn publish(&self, point: DurablePoint, written: usize) {
        self.durable.store(point.lsn, Ordering::Release);
        *lock(&self.durable_point) = point;
        if written > 0 {
            lock(&self.queue).unwritten -= written;
            self.space_cv.notify_all();
        }
        self.wake_durable_waiters();
    }
}

/// Handle to an open log. `Send + Sync`: share it behind an `Arc` if several threads
/// append; the writer thread belongs to it.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    backend: BackendKind,
    max_payload: usize,
    max_pending: usize,
    _lock_file: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("backend", &self.backend)
            .field("durable", &self.shared.durable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Where the log stood when a test simulated a crash.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct CrashPoint {
    /// Latest durable LSN.
    pub durable_lsn: Lsn,
    /// Segment holding the end of durable data.
    pub segment: PathBuf,
    /// Byte offset in `segment` where durable data ends.
    pub offset: u64,
}

/// Opens (creating if needed) the log in `dir`, recovers it and starts its writer thread.
///
/// Returns the handle and everything recovered. A torn tail is truncated and reported in
/// [`Recovery::truncated_tail`]; damage to records that had been durable fails with
/// [`WalError::Corrupt`].
pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
    open_inner(
        dir,
        options,
        #[cfg(test)]
        None,
    )
}

fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: plain syscall on a valid descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(WalError::Locked { dir: dir.to_path_buf() });
        }
        return Err(WalError::io(format!("locking {}", path.display()), err));
    }
    Ok(file)
}

pub(crate) fn open_inner(
    dir: &Path,
    options: WalOptions,
    #[cfg(test)] fault: Option<crate::io::faulty::Plan>,
) -> Result<(Wal, Recovery), WalError> {
    if options.segment_size_bytes < MIN_SEGMENT_BYTES {
        return Err(WalError::InvalidOptions(format!("segment_size_bytes must be at least {MIN_SEGMENT_BYTES}")));
    }
    if options.max_pending_bytes == 0 {
        return Err(WalError::InvalidOptions("max_pending_bytes must be positive".into()));
    }
    let fits_segment = options.segment_size_bytes as usize - HEADER_LEN - 4 * MARKER_FRAME_LEN;
    let max_payload = (options.max_record_bytes as usize).min(fits_segment);

    std::fs::create_dir_all(dir).map_err(|e| WalError::io(format!("creating {}", dir.display()), e))?;
    let lock_file = lock_dir(dir)?;
    let scan = recovery::recover(dir, options.max_record_bytes)?;
    let next_lsn = scan.next_lsn;

    let mut segments = scan.segments;
    let (active_meta, active_file, active_end, capacity) = match segments.last() {
        Some(last) => {
            let file = segment::open_segment(&last.path)?;
            let len =
                file.metadata().map_err(|e| WalError::io(format!("inspecting {}", last.path.display()), e))?.len();
            (last.clone(), file, scan.active_end, len)
        }
        None => {
            let (meta, file) = segment::create_segment(dir, next_lsn, options.segment_size_bytes)?;
            segments.push(meta.clone());
            (meta, file, 0, options.segment_size_bytes)
        }
    };
    tracing::info!(
        dir = %dir.display(),
        records = scan.records.len(),
        next_lsn,
        segments = segments.len(),
        "wal recovered"
    );

    let (doorbell_tx, doorbell_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        queue: Mutex::new(Queue {
            buf: Vec::new(),
            next_lsn,
            unwritten: 0,
            urgent_queued: false,
            oldest: None,
            writing: false,
            urgent_during_write: false,
            writer: WriterWait::Awake,
            stop: StopMode::Running,
        }),
        writer_cv: Condvar::new(),
        space_cv: Condvar::new(),
        durable: AtomicU64::new(next_lsn - 1),
        appended: AtomicU64::new(next_lsn - 1),
        failed: AtomicBool::new(false),
        abandon: AtomicBool::new(false),
        error: OnceLock::new(),
        wait_lock: Mutex::new(()),
        durable_cv: Condvar::new(),
        doorbell_tx,
        doorbell_rx,
        notify: OnceLock::new(),
        stats: Arc::default(),
        segments: Mutex::new(segments),
        durable_point: Mutex::new(DurablePoint {
            lsn: next_lsn - 1,
            segment_first_lsn: active_meta.first_lsn,
            offset: active_end,
        }),
    });

    let setup = Setup {
        shared: shared.clone(),
        dir: dir.to_path_buf(),
        segment_size: options.segment_size_bytes,
        sync: options.sync == SyncMode::Fdatasync,
        spin: options.writer_spin,
        timing: GroupTiming::new(options.lazy_sync_within, options.busy_group_interval, options.busy_group_phase),
        crash_mid_group_after: options.crash_mid_group_after,
        active_meta,
        active_file,
        active_end,
        capacity,
        next_lsn,
        protected: scan.protected,
    };
    let (start_tx, start_rx) = crossbeam_channel::bounded::<Result<BackendKind, WalError>>(1);
    let backend_choice = options.backend;
    let handle = std::thread::Builder::new()
        .name("twophase-wal".into())
        .spawn(move || {
            let mut guard = ExitGuard { shared: setup.shared.clone(), clean: false };
            #[cfg(test)]
            if let Some(plan) = fault {
                let _ = start_tx.send(Ok(BackendKind::Portable));
                Writer::new(plan.into_backend(Portable), setup).run();
                guard.clean = true;
                return;
            }
            run_writer(backend_choice, setup, start_tx);
            guard.clean = true;
        })
        .map_err(|e| WalError::io("spawning the wal writer thread", e))?;
    let backend = match start_rx.recv() {
        Ok(Ok(kind)) => kind,
        Ok(Err(e)) => {
            let _ = handle.join();
            return Err(e);
        }
        Err(_) => {
            let _ = handle.join();
            return Err(WalError::WriterStopped);
        }
    };

    let wal = Wal {
        shared,
        writer: Some(handle),
        backend,
        max_payload,
        max_pending: options.max_pending_bytes,
        _lock_file: lock_file,
    };
    let recovery = Recovery { records: scan.records, next_lsn: Lsn(next_lsn), truncated_tail: scan.torn };
    Ok((wal, recovery))
}

fn run_writer(choice: Backend, setup: Setup, start_tx: Sender<Result<BackendKind, WalError>>) {
    match choice {
        Backend::Portable => {
            let _ = start_tx.send(Ok(BackendKind::Portable));
            Writer::new(Portable, setup).run();
        }
        #[cfg(target_os = "linux")]
        Backend::IoUring | Backend::Auto => match crate::io::Uring::probe() {
            Ok(uring) => {
                let _ = start_tx.send(Ok(BackendKind::IoUring));
                Writer::new(uring, setup).run();
            }
            Err(e) if choice == Backend::Auto => {
                tracing::warn!(error = %e, "io_uring refused; the wal falls back to pwrite + fdatasync");
                let _ = start_tx.send(Ok(BackendKind::Portable));
                Writer::new(Portable, setup).run();
            }
            Err(e) => {
                let _ = start_tx.send(Err(WalError::Unsupported(format!("io_uring: {e}"))));
            }
        },
        #[cfg(not(target_os = "linux"))]
        Backend::IoUring => {
            let _ = start_tx.send(Err(WalError::Unsupported("io_uring needs Linux".into())));
        }
        #[cfg(not(target_os = "linux"))]
        Backend::Auto => {
            let _ = start_tx.send(Ok(BackendKind::Portable));
            Writer::new(Portable, setup).run();
        }
    }
}

/// Fails the log if the writer thread ends without being told to (a panic).
struct ExitGuard {
    shared: Arc<Shared>,
    clean: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if !self.clean {
            self.shared.fail(WalError::WriterStopped);
        }
    }
}

struct Setup {
    shared: Arc<Shared>,
    dir: PathBuf,
    segment_size: u64,
    sync: bool,
    spin: std::time::Duration,
    timing: GroupTiming,
    crash_mid_group_after: Option<u64>,
    active_meta: SegmentMeta,
    active_file: File,
    active_end: u64,
    capacity: u64,
    next_lsn: u64,
    protected: bool,
}

struct Active<F> {
    meta: SegmentMeta,
    file: Rc<F>,
    offset: u64,
    capacity: u64,
}

struct Writer<B: IoBackend> {
    io: B,
    shared: Arc<Shared>,
    dir: PathBuf,
    segment_size: u64,
    sync: bool,
    spin: std::time::Duration,
    timing: GroupTiming,
    /// Set after a busy group: the next group starts no earlier than this.
    busy_until: Option<Instant>,
    /// The group being taken or written held urgent records back for its slot.
    group_held: bool,
    /// The `WalOptions::crash_mid_group_after` test hook, and the groups of records
    /// written so far (it counts nothing else).
    crash_mid_group_after: Option<u64>,
    groups_written: u64,
    active: Active<B::File>,
    /// LSN the next written record carries.
    next_lsn: u64,
    /// False while the last written group holds records and no marker follows it.
    protected: bool,
    spare: Vec<u8>,
    pool: Vec<Vec<u8>>,
}

impl<B: IoBackend> Writer<B> {
    fn new(io: B, s: Setup) -> Writer<B> {
        let file = Rc::new(io.adopt(s.active_file));
        Writer {
            io,
            shared: s.shared,
            dir: s.dir,
            segment_size: s.segment_size,
            sync: s.sync,
            spin: s.spin,
            timing: s.timing,
            busy_until: None,
            group_held: false,
            crash_mid_group_after: s.crash_mid_group_after,
            groups_written: 0,
            active: Active { meta: s.active_meta, file, offset: s.active_end, capacity: s.capacity },
            next_lsn: s.next_lsn,
            protected: s.protected,
            spare: Vec::new(),
            pool: Vec::new(),
        }
    }

    fn run(mut self) {
        tracing::debug!(backend = ?self.io.kind(), "wal writer started");
        loop {
            let mut taken = std::mem::take(&mut self.spare);
            self.spin_for_work();
            let Some(stop) = self.take_group(&mut taken) else { return };
            let started = Instant::now();
            if !taken.is_empty() && !self.write_frames(&taken) {
                return;
            }
            self.note_group_done(started);
            taken.clear();
            self.spare = taken;
            if stop == StopMode::Close {
                if !self.protected
                    && let Err(e) = self.write_group(&[])
                {
                    self.shared.fail(e);
                }
                return;
            }
        }
    }

    /// Waits until a group is due (see [`GroupTiming`]) and swaps the queued records into
    /// `taken`. `None` when a crash is being simulated.
    fn take_group(&mut self, taken: &mut Vec<u8>) -> Option<StopMode> {
        let mut q = lock(&self.shared.queue);
        self.group_held = false;
        loop {
            if q.stop == StopMode::Crash {
                return None;
            }
            let now = Instant::now();
            let (reason, until) = match q.stop {
                StopMode::Close => (WriterWait::Awake, None),
                _ => self.timing.next_group(&q, self.busy_until, now),
            };
            if reason == WriterWait::Awake {
                break;
            }
            self.group_held |= reason == WriterWait::Busy && q.urgent_queued;
            q.writer = reason;
            q = match until {
                Some(until) => wait_until(&self.shared.writer_cv, q, until),
                None => wait(&self.shared.writer_cv, q),
            };
            q.writer = WriterWait::Awake;
        }
        std::mem::swap(&mut q.buf, taken);
        q.urgent_queued = false;
        q.oldest = None;
        q.writing = true;
        q.urgent_during_write = false;
        Some(q.stop)
    }

    /// After a group: see [`GroupTiming::next_busy_slot`].
    fn note_group_done(&mut self, started: Instant) {
        let mut q = lock(&self.shared.queue);
        q.writing = false;
        let urgent_during_write = std::mem::take(&mut q.urgent_during_write);
        self.busy_until = self.timing.next_busy_slot(started, urgent_during_write, self.group_held);
    }

    /// Spins (without the lock) for up to `WalOptions::writer_spin` until a record is appended that is
    /// not written yet.
    fn spin_for_work(&self) {
        let written = self.next_lsn - 1;
        if self.spin.is_zero() || self.shared.appended.load(Ordering::Acquire) > written {
            return;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < self.spin {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if self.shared.appended.load(Ordering::Acquire) > written || self.shared.abandon.load(Ordering::Relaxed) {
                return;
            }
        }
    }

    /// Writes `taken` as one or more groups of at most `GROUP_MAX_BYTES`. False if the log
    /// failed (or a crash is being simulated).
    fn write_frames(&mut self, taken: &[u8]) -> bool {
        let mut start = 0;
        while start < taken.len() {
            if self.shared.abandon.load(Ordering::Relaxed) {
                return false;
            }
            let mut end = start;
            while end < taken.len() {
                let len = frame::frame_len_at(taken, end);
                if end > start && end + len - start > GROUP_MAX_BYTES {
                    break;
                }
                end += len;
            }
            if let Err(e) = self.write_group(&taken[start..end]) {
                self.shared.fail(e);
                return false;
            }
            start = end;
        }
        true
    }

    /// Writes one group: a marker, then `frames`, with one write per segment touched and
    /// one sync per segment touched, then publishes the new durable LSN.
    fn write_group(&mut self, frames: &[u8]) -> Result<(), WalError> {
        let first = self.next_lsn;
        debug_assert!(frames.is_empty() || frame::lsn_at(frames, 0) == first);
        if self.active.offset + MARKER_FRAME_LEN as u64 > self.active.capacity {
            self.rotate(first)?;
        }
        let mut writes: Vec<WriteOp<B::File>> = Vec::with_capacity(1);
        let mut paths: Vec<u64> = Vec::with_capacity(1);
        let mut cur = self.pool.pop().unwrap_or_default();
        frame::encode_marker(&mut cur, first);
        let mut last = first - 1;
        let mut off = 0;
        while off < frames.len() {
            let len = frame::frame_len_at(frames, off);
            let lsn = frame::lsn_at(frames, off);
            if self.active.offset + (cur.len() + len) as u64 > self.active.capacity {
                if !cur.is_empty() {
                    let n = cur.len() as u64;
                    writes.push(WriteOp { file: self.active.file.clone(), offset: self.active.offset, buf: cur });
                    paths.push(self.active.meta.first_lsn);
                    self.active.offset += n;
                    cur = self.pool.pop().unwrap_or_default();
                }
                self.rotate(lsn)?;
            }
            cur.extend_from_slice(&frames[off..off + len]);
            off += len;
            last = lsn;
        }
        let n = cur.len() as u64;
        writes.push(WriteOp { file: self.active.file.clone(), offset: self.active.offset, buf: cur });
        paths.push(self.active.meta.first_lsn);
        self.active.offset += n;

        if !frames.is_empty() && self.crash_mid_group_after == Some(self.groups_written) {
            self.crash_mid_group(writes, first, last);
        }
        let started = Instant::now();
        if let Err(f) = self.io.write_group(&mut writes, self.sync) {
            let seg = self.dir.join(segment::segment_file_name(paths[f.index.min(paths.len() - 1)]));
            return Err(WalError::io(
                format!("{} of segment {} (write group of LSNs {first}..={last})", f.op, seg.display()),
                f.err,
            ));
        }
        self.next_lsn = last + 1;
        self.protected = frames.is_empty();
        self.groups_written += u64::from(!frames.is_empty());
        if !frames.is_empty() {
            self.shared.stats.record_group(last + 1 - first, started.elapsed());
        }
        for w in writes {
            let mut buf = w.buf;
            if self.pool.len() < 4 && buf.capacity() <= 2 * GROUP_MAX_BYTES {
                buf.clear();
                self.pool.push(buf);
            }
        }
        self.shared.publish(
            DurablePoint { lsn: last, segment_first_lsn: self.active.meta.first_lsn, offset: self.active.offset },
            frames.len(),
        );
        Ok(())
    }

    /// The `crash_mid_group_after` test hook: writes the marker and about half of the
    /// group's records (unsynced, so exactly what a crash during the write can leave behind)
    /// and kills the process. Nothing after it runs, so nothing is published.
    fn crash_mid_group(&mut self, writes: Vec<WriteOp<B::File>>, first: u64, last: u64) -> ! {
        let total: usize = writes.iter().map(|w| w.buf.len()).sum();
        let mut keep = MARKER_FRAME_LEN + (total - MARKER_FRAME_LEN) / 2;
        let mut partial = Vec::with_capacity(writes.len());
        for mut write in writes {
            if keep == 0 {
                break;
            }
            let n = write.buf.len().min(keep);
            write.buf.truncate(n);
            keep -= n;
            partial.push(write);
        }
        let written: usize = partial.iter().map(|w| w.buf.len()).sum();
        let result = self.io.write_group(&mut partial, false);
        let line = format!(
            "wal crash_mid_group_after: wrote {written} of {total} bytes of the group of LSNs {first}..={last} \
             ({result:?}); killing this process\n",
            result = result.map_err(|f| f.err)
        );
        // One write, so that the line is whole even in a pipe shared with other output.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        // SAFETY: kill(2) and pause(2) on our own process; no memory is involved.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
            loop {
                libc::pause();
            }
        }
    }

    /// Makes a new preallocated segment starting at `first_lsn` the active one.
    fn rotate(&mut self, first_lsn: u64) -> Result<(), WalError> {
        let (meta, file) = segment::create_segment(&self.dir, first_lsn, self.segment_size)?;
        tracing::debug!(segment = %meta.path.display(), "wal segment created");
        lock(&self.shared.segments).push(meta.clone());
        self.active = Active { meta, file: Rc::new(self.io.adopt(file)), offset: 0, capacity: self.segment_size };
        Ok(())
    }
}

impl Wal {
    /// Queues one record and returns its LSN (consecutive, starting after the recovered
    /// ones). It is not durable yet: see [`Wal::durable_lsn`], [`Wal::doorbell`],
    /// [`Wal::wait_durable`]. The writer starts a group for it at once (or, while the log
    /// is busy, on the next slot of [`WalOptions::busy_group_interval`]). Blocks while more than
    /// `max_pending_bytes` are queued. Kind 0 is reserved for the wal itself.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        self.append_inner(kind, payload, true)
    }

    /// Like [`Wal::append`] for a record nobody waits on urgently: it becomes durable with
    /// the next group, and at the latest [`WalOptions::lazy_sync_within`] after it was
    /// appended. Saves a sync (a device flush) per record that can wait.
    pub fn append_lazy(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        self.append_inner(kind, payload, false)
    }

    fn append_inner(&self, kind: u8, payload: &[u8], urgent: bool) -> Result<Lsn, WalError> {
        if kind == MARKER_KIND {
            return Err(WalError::ReservedKind);
        }
        if payload.len() > self.max_payload {
            return Err(WalError::RecordTooLarge { len: payload.len(), max: self.max_payload });
        }
        let payload_crc = (payload.len() >= PRECOMPUTE_CRC_FROM).then(|| crc32c::crc32c(payload));
        let len = frame::frame_len(payload.len());
        let shared = &*self.shared;
        let mut q = lock(&shared.queue);
        loop {
            if let Some(e) = shared.error() {
                return Err(e);
            }
            if q.unwritten == 0 || q.unwritten + len <= self.max_pending {
                break;
            }
            q = wait(&shared.space_cv, q);
        }
        let lsn = q.next_lsn;
        q.next_lsn += 1;
        frame::encode_into(&mut q.buf, lsn, kind, payload, payload_crc);
        q.unwritten += len;
        q.oldest.get_or_insert_with(Instant::now);
        q.urgent_queued |= urgent;
        q.urgent_during_write |= urgent && q.writing;
        shared.appended.store(lsn, Ordering::Release);
        let wake = match q.writer {
            WriterWait::Idle => true,
            WriterWait::Lazy => urgent,
            WriterWait::Awake | WriterWait::Busy => q.buf.len() >= GROUP_MAX_BYTES,
        };
        if wake {
            q.writer = WriterWait::Awake;
            shared.writer_cv.notify_one();
        }
        Ok(Lsn(lsn))
    }

    /// The latest durable LSN: every LSN up to it is on disk (fdatasync returned). After a
    /// failure this returns the failure, forever.
    pub fn durable_lsn(&self) -> Result<Lsn, WalError> {
        match self.shared.error() {
            Some(e) => Err(e),
            None => Ok(Lsn(self.shared.durable.load(Ordering::Acquire))),
        }
    }

    /// A receiver that rings (one pending token at most) after each group becomes durable
    /// and on failure. Select on it with other inputs, then read [`Wal::durable_lsn`].
    /// All clones share one channel, so give it to one consumer.
    pub fn doorbell(&self) -> Receiver<()> {
        self.shared.doorbell_rx.clone()
    }

    /// Installs a callback the writer thread calls after each group becomes durable and on
    /// failure, like the doorbell but for a consumer that sleeps in something else (a
    /// reactor's poll). It must be quick and must not call back into the log. Only the
    /// first callback installed counts.
    pub fn on_durable(&self, notify: Box<dyn Fn() + Send + Sync>) {
        if self.shared.notify.set(notify).is_err() {
            tracing::warn!("wal on_durable callback already installed; ignoring another");
        }
    }

    /// Blocks until `lsn` is durable, or returns the log's failure. An LSN never appended is
    /// an error rather than an endless wait.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        let shared = &*self.shared;
        if let Some(e) = shared.error() {
            return Err(e);
        }
        if shared.durable.load(Ordering::Acquire) >= lsn.0 {
            return Ok(());
        }
        let last = shared.appended.load(Ordering::Acquire);
        if lsn.0 > last {
            return Err(WalError::NotAppended { lsn, last: Lsn(last) });
        }
        let mut g = lock(&shared.wait_lock);
        loop {
            if let Some(e) = shared.error() {
                return Err(e);
            }
            if shared.durable.load(Ordering::Acquire) >= lsn.0 {
                return Ok(());
            }
            g = wait(&shared.durable_cv, g);
        }
    }

    /// Declares records `< lsn` unneeded: deletes every whole segment all of whose records
    /// are `< lsn`, oldest first, never the active one, then syncs the directory.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<(), WalError> {
        let victims: Vec<SegmentMeta> = {
            let mut segs = lock(&self.shared.segments);
            let mut k = 0;
            while k + 1 < segs.len() && segs[k + 1].first_lsn <= lsn.0 {
                k += 1;
            }
            segs.drain(..k).collect()
        };
        if victims.is_empty() {
            return Ok(());
        }
        for v in &victims {
            std::fs::remove_file(&v.path)
                .map_err(|e| WalError::io(format!("deleting segment {}", v.path.display()), e))?;
        }
        segment::sync_dir(&self.shared.dir)?;
        tracing::info!(deleted = victims.len(), before = lsn.0, "wal truncated old segments");
        Ok(())
    }

    /// The backend really in use (after `Backend::Auto` probing).
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The writer's measurements, shared: they outlive the log (a metrics reader may hold them).
    pub fn stats(&self) -> Arc<WalStats> {
        self.shared.stats.clone()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Drains the queue, makes everything durable (plus a final marker that protects the
    /// last group, see the crate docs), stops the writer thread. Returns the log's failure
    /// if it failed at any point.
    pub fn close(mut self) -> Result<(), WalError> {
        self.shutdown(StopMode::Close)
    }

    /// Test support: stops the writer as abruptly as possible (queued records are dropped,
    /// nothing further is written or synced) and reports where durable data ends, so a test
    /// can simulate a torn tail after it.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) -> CrashPoint {
        let _ = self.shutdown(StopMode::Crash);
        let p = *lock(&self.shared.durable_point);
        CrashPoint {
            durable_lsn: Lsn(p.lsn),
            segment: self.shared.dir.join(segment::segment_file_name(p.segment_first_lsn)),
            offset: p.offset,
        }
    }

    fn shutdown(&mut self, mode: StopMode) -> Result<(), WalError> {
        if mode == StopMode::Crash {
            self.shared.abandon.store(true, Ordering::Relaxed);
        }
        {
            let mut q = lock(&self.shared.queue);
            q.stop = mode;
        }
        self.shared.writer_cv.notify_one();
        if let Some(h) = self.writer.take()
            && h.join().is_err()
        {
            self.shared.fail(WalError::WriterStopped);
        }
        match self.shared.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if self.writer.is_some()
            && let Err(e) = self.shutdown(StopMode::Close)
        {
            tracing::warn!(error = %e, "wal dropped in a failed state");
        }
    }
}
