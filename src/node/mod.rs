//! The node runtime: the pipeline that joins the engine, the log and the network.
//!
//! Threads: the engine thread (this module's [`run`]) drives the network itself through a
//! [`Reactor`] (all sockets; decodes frames into batches, writes coalesced frames), steps
//! the state machine over each batch, appends to the log and holds outputs in a
//! [`DurabilityGate`]; the wal's group-commit thread syncs and wakes the reactor when
//! records become durable; participants and coordinators also have a snapshot writer.
//! Why the network is not a thread of its own: on a 2-core VM every hand-off between
//! threads is a wake-up worth tens of microseconds, and a transaction crossed four of them
//! per node. Reading is bounded per round, so a flood pushes back through TCP.
//!
//! Invariants: an output leaves only after the log is durable up to its LSN; a log failure
//! (write or fsync error) stops the process — it is never retried.

mod applied;
pub mod backend;
pub mod backend_rm;
pub mod coordinator;
mod coordinator_links;
pub mod dump;
mod held_frames;
pub mod participant;
pub mod replicated;
pub mod snapshot;
pub mod threepc;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use twophase_engine::{DurabilityGate, Effects, LogRecord, Lsn, Time};
use twophase_net::{Inbound, Reactor};
use twophase_wal::{Backend, SyncMode, Wal, WalOptions};

/// The engine thread never sleeps longer than this, so a stop request is seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// The process clock: nanoseconds since start, as the engine's [`Time`].
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    pub fn now(&self) -> Time {
        Time(self.start.elapsed().as_nanos() as u64)
    }
}

/// A role adapter: what one kind of node does with network input and engine output.
pub trait Role {
    type Record: LogRecord;
    type Output;

    /// The node's network, driven by the engine thread.
    fn reactor(&mut self) -> &mut Reactor;
    fn on_inbound(&mut self, now: Time, inbound: Inbound, fx: &mut Effects<Self::Record, Self::Output>);
    fn on_tick(&mut self, now: Time, fx: &mut Effects<Self::Record, Self::Output>);
    fn next_deadline(&self) -> Option<Time>;
    /// Sends released outputs (coalesced per connection) and empties `released`.
    fn route(&mut self, released: &mut Vec<Self::Output>);
    /// Called after every step with the log's durable LSN.
    fn after_step(&mut self, _durable: Lsn) {}
    /// Whether `record` starts a group commit at once (`Wal::append`) or rides with the next
    /// one (`Wal::append_lazy`); the record's own say unless the role knows better.
    fn urgent(&self, record: &Self::Record) -> bool {
        record.urgent()
    }
    /// Called right after `record` was handed to the log, before it is durable (failpoints).
    fn appended(&mut self, _record: &Self::Record) {}
    /// Sees a step's appends and outputs before they are logged and gated (tracing).
    fn observe(&mut self, _fx: &Effects<Self::Record, Self::Output>) {}
    /// The log's metrics, when metrics are on.
    fn log_metrics(&mut self) -> Option<&mut crate::metrics::LogMetrics> {
        None
    }
}

/// Options every node shares.
#[derive(Clone, Debug)]
pub struct Storage {
    pub unsafe_no_fsync: bool,
    pub segment_size_bytes: u64,
    /// While the log is busy, at most one group commit (one device flush) per this long, on
    /// multiples of it on the monotonic clock (shared by every process on the machine).
    pub group_interval: Duration,
    /// Where in the interval this node's slots sit (past the multiples of it on the
    /// monotonic clock). Zero for every node today: the coordinator's `Staged` records are
    /// written as the prepares leave and must be durable when the votes return, so its slots
    /// coincide with the participants'. (Before the parallel commit point the coordinator sat
    /// half an interval later, where its `Commit` records met the arriving votes.)
    pub group_phase: Duration,
}

impl Default for Storage {
    fn default() -> Storage {
        Storage {
            unsafe_no_fsync: false,
            segment_size_bytes: 64 << 20,
            group_interval: DEFAULT_GROUP_INTERVAL,
            group_phase: Duration::ZERO,
        }
    }
}

/// See [`Storage::group_interval`] and docs/OPERATIONS.md (why flushes are rationed).
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_micros(1500);

/// Takes the data directory for this process alone (a second process on the same
/// directory would corrupt the log) and opens the wal in it.
pub fn open_storage(data_dir: &Path, storage: &Storage) -> anyhow::Result<(File, Wal, twophase_wal::Recovery)> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let lock_path = data_dir.join("LOCK");
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!("{} is in use by another twophase process", data_dir.display());
    }
    if storage.unsafe_no_fsync {
        tracing::warn!("--unsafe-no-fsync: records are not synced; a crash of the machine loses acknowledged commits");
    }
    let options = WalOptions {
        segment_size_bytes: storage.segment_size_bytes,
        backend: Backend::Auto,
        sync: if storage.unsafe_no_fsync { SyncMode::None } else { SyncMode::Fdatasync },
        crash_mid_group_after: crate::failpoint::wal_crash_mid_group_after(),
        busy_group_interval: storage.group_interval,
        busy_group_phase: storage.group_phase,
        ..WalOptions::default()
    };
    let wal_dir = data_dir.join("wal");
    let (wal, recovery) =
        twophase_wal::open(&wal_dir, options).with_context(|| format!("opening the log in {}", wal_dir.display()))?;
    if let Some(torn) = &recovery.truncated_tail {
        tracing::warn!(segment = %torn.segment.display(), offset = torn.offset, bytes = torn.bytes_dropped, "cut a torn log tail");
    }
    tracing::info!(records = recovery.records.len(), backend = ?wal.backend(), "log recovered");
    Ok((lock, wal, recovery))
}

/// Decodes the recovered records after `covered` (what a snapshot already holds: skipping
/// them keeps restart time bounded by the snapshot interval, not by the segment size); a
/// record that does not decode is corruption: refuse to start.
pub fn decode_log<R: LogRecord>(recovery: twophase_wal::Recovery, covered: Lsn) -> anyhow::Result<Vec<(Lsn, R)>> {
    recovery
        .records
        .into_iter()
        .filter(|record| record.lsn.0 > covered.0)
        .map(|record| {
            let decoded = R::decode(record.kind, record.payload)
                .with_context(|| format!("log record at LSN {} (kind {}) is corrupt", record.lsn, record.kind))?;
            Ok((Lsn(record.lsn.0), decoded))
        })
        .collect()
}

/// Answers a frame a connection may not send with an `Error` frame, then closes it (after
/// flushing). The process keeps serving every other connection.
pub fn refuse(transport: &mut Reactor, conn: twophase_net::ConnId, message: String) {
    tracing::warn!(conn, "{message}; closing the connection");
    let error = twophase_net::ProtocolError::new(twophase_net::ErrorCode::UnexpectedFrame, message);
    transport.send(conn, error.to_frame().to_bytes());
    transport.close(conn);
}

/// Installs SIGINT/SIGTERM handling: the returned flag turns true on a signal.
pub fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the signal handler")?;
    Ok(stop)
}

/// Pins the calling thread to `core` if given and present.
pub fn pin_current_thread(core: Option<usize>) {
    let Some(core) = core else { return };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match cores.into_iter().find(|id| id.id == core) {
        Some(id) if core_affinity::set_for_current(id) => tracing::info!(core, "engine thread pinned"),
        _ => tracing::warn!(core, "cannot pin the engine thread to that core; running unpinned"),
    }
}

/// The engine thread's loop. Returns when `stop` is set; returns an error (and the process
/// must exit) when the log or the network fails.
pub fn run<R: Role>(
    role: &mut R,
    mut fx: Effects<R::Record, R::Output>,
    wal: &Wal,
    clock: Clock,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let waker = role.reactor().waker();
    let groups = role.log_metrics().map(|log| log.groups_counter());
    wal.on_durable(Box::new(move || {
        if let Some(groups) = &groups {
            groups.fetch_add(1, Ordering::Relaxed);
        }
        // A failed wake means the reactor is gone: nobody is left to tell.
        let _ = waker.wake();
    }));
    let mut gate = DurabilityGate::new(Lsn(wal.durable_lsn()?.0));
    let mut released = Vec::new();
    let mut payload = Vec::with_capacity(4096);
    let mut batch = Vec::new();
    loop {
        apply_effects(role, &mut fx, wal, &mut gate, &mut released, &mut payload)?;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = clock.now();
        let wait = role.next_deadline().map_or(MAX_WAIT, |deadline| deadline.since(now)).min(MAX_WAIT);
        // Durable records since the last look: release their outputs before sleeping.
        let wait = if Lsn(wal.durable_lsn()?.0) > gate.durable() { Duration::ZERO } else { wait };
        role.reactor().turn(Some(wait), &mut batch).context("the network failed")?;
        let now = clock.now();
        for inbound in batch.drain(..) {
            role.on_inbound(now, inbound, &mut fx);
        }
        if role.next_deadline().is_some_and(|deadline| deadline <= now) {
            role.on_tick(now, &mut fx);
        }
    }
}

/// Appends the step's records (the wal must hand out the very LSNs the engine assigned),
/// gates its outputs and releases whatever the log's durable LSN now allows.
fn apply_effects<R: Role>(
    role: &mut R,
    fx: &mut Effects<R::Record, R::Output>,
    wal: &Wal,
    gate: &mut DurabilityGate<R::Output>,
    released: &mut Vec<R::Output>,
    payload: &mut Vec<u8>,
) -> anyhow::Result<()> {
    role.observe(fx);
    for (lsn, record) in fx.appends.drain(..) {
        payload.clear();
        record.encode_payload(payload);
        let urgent = role.urgent(&record);
        let assigned =
            if urgent { wal.append(record.kind(), payload) } else { wal.append_lazy(record.kind(), payload) }
                .context("appending to the log")?;
        assert_eq!(assigned.0, lsn.0, "the log and the engine disagree on LSNs");
        if let Some(log) = role.log_metrics() {
            log.appended(lsn, payload.len(), urgent);
        }
        role.appended(&record);
    }
    for output in fx.outputs.drain(..) {
        gate.push(output, released);
    }
    let durable = Lsn(wal.durable_lsn().context("the log failed")?.0);
    if durable > gate.durable() {
        gate.advance(durable, released);
    }
    role.after_step(durable);
    if !released.is_empty() {
        role.route(released);
    }
    Ok(())
}
