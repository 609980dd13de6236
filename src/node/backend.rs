//! The participant node over a database (`twophase participant --backend postgres|mariadb`):
//! the same protocol engine and log as the key-value participant, with a
//! [`BackendResource`](super::backend_rm::BackendResource) as its resource manager.
//!
//! The executor's pool threads wake the reactor when a completion arrives; the engine thread
//! then sees a due deadline and takes the completions in `on_tick` (so `node::run` needs no
//! hook of its own). Acks of commits leave only after the database's commit returned (see
//! `backend_rm`). Snapshots hold only the protocol state (the data is the database's): the
//! prepared transactions, the epoch and the highest txid, after which the log is truncated
//! as the key-value participant's is. Its metrics and spans are the key-value participant's
//! ([`ParticipantMetrics`], [`ParticipantTrace`]), fed by the same hooks; a Yes vote here
//! ends its `prepare` span when it leaves (it waits for the database's PREPARE, not for
//! this participant's log). Kept out of this runtime, unlike the key-value one: dumps.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use twophase_backends::conn::session_name;
use twophase_backends::{DbError, Executor, Gid, MariaConnector, PgConnector, PoolConfig, Reason, Reply, Request};
use twophase_engine::participant::{
    KvImage, PartEffects, Participant, ParticipantConfig, ParticipantSnapshot, PrepareResult,
};
use twophase_engine::{Epoch, Lsn, PartRecord, Time, ToCoordinator, TxId, Vote};
use twophase_net::{BatchWriter, ConnId, Frame, Hello, Inbound, NetLimits, Reactor, Role as NetRole, TransportConfig};

use crate::failpoint::{self, Failpoint};
use crate::metrics::{NodeInfo, ParticipantMetrics};
use crate::trace::Exporter;
use crate::trace::participant::ParticipantTrace;

use super::backend_rm::{BackendDriver, BackendResource, RECOVER_TAG};
use super::coordinator_links::CoordinatorLinks;
use super::participant::ParticipantOptions;
use super::snapshot::{self, SnapshotPolicy, Snapshotter};
use super::{Clock, Role};

/// Completions taken per engine step, so that a flood of them cannot starve the network.
const COMPLETIONS_PER_STEP: usize = 4096;
/// How long the participant-vote-sent failpoint waits for the vote to reach the socket.
const FAILPOINT_FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How long start-up waits for the database to list its prepared transactions, per try.
const RECOVER_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BackendKind {
    Postgres,
    MariaDb,
}

#[derive(Clone, Debug)]
pub struct BackendOptions {
    pub kind: BackendKind,
    /// `host=... dbname=...` (PostgreSQL) or `mysql://user@host:port/db` (MariaDB).
    pub dsn: String,
    /// Database connections at most (two of them kept for decisions and recovery).
    pub connections_max: usize,
}

struct BackendRole {
    engine: Participant<BackendResource>,
    driver: Rc<RefCell<BackendDriver>>,
    transport: Reactor,
    coordinators: CoordinatorLinks,
    to_coordinator: BatchWriter<ToCoordinator>,
    tls: bool,
    clock: Clock,
    /// Snapshots of the protocol state (prepared transactions, epoch, highest txid), after
    /// which the log before them is truncated.
    snapshots: SnapshotPolicy<ParticipantSnapshot>,
    /// When each Yes the engine is about to send was prepared (the profile's vote gate),
    /// at most `VOTES_TIMED_MAX`.
    yes_since: HashMap<TxId, Time>,
    metrics: ParticipantMetrics,
    /// Spans of sampled transactions; `None` when tracing is off.
    trace: Option<ParticipantTrace>,
}

/// Bound on `BackendRole::yes_since` (a transaction aborted before its vote left leaves
/// its entry behind; past the bound the map starts afresh).
const VOTES_TIMED_MAX: usize = 65_536;

impl BackendRole {
    fn on_frame(&mut self, now: Time, conn: ConnId, frame: Frame, fx: &mut PartEffects) {
        match frame {
            Frame::ToParticipant { epoch, messages } if self.coordinators.contains(conn) => {
                if let Err(refused) = self.engine.check_frame(epoch, &messages) {
                    tracing::warn!(conn, "refusing a coordinator frame: {refused}");
                    return super::refuse(&mut self.transport, conn, format!("frame refused: {refused}"));
                }
                for message in messages {
                    if let Some(trace) = &mut self.trace {
                        trace.on_message(&message);
                    }
                    self.metrics.received(now, &message);
                    if let Err(refused) = self.engine.on_message(now, epoch, message, fx) {
                        tracing::warn!(conn, "refusing a coordinator message: {refused}");
                    }
                }
            }
            Frame::TraceContext(entries) if self.coordinators.contains(conn) => {
                if let Some(trace) = &mut self.trace {
                    trace.on_trace_context(entries);
                }
            }
            other => super::refuse(
                &mut self.transport,
                conn,
                format!("a database participant does not serve {:?} frames on this connection", other.kind()),
            ),
        }
    }

    /// Completions in, prepares answered, events reported, held acks released.
    fn drain_database(&mut self, now: Time, fx: &mut PartEffects) {
        let (done, acks) = {
            let mut driver = self.driver.borrow_mut();
            driver.on_completions(now, COMPLETIONS_PER_STEP);
            driver.on_tick(now);
            (driver.take_prepares_done(), driver.take_released_acks())
        };
        for (txid, result) in done {
            if matches!(result, PrepareResult::Yes { .. }) {
                if self.yes_since.len() >= VOTES_TIMED_MAX {
                    self.yes_since.clear();
                }
                self.yes_since.insert(txid, now);
            }
            self.engine.on_prepare_done(now, txid, result, fx);
        }
        // Their Committed records passed the durability gate before they were held.
        let mut acks: Vec<ToCoordinator> = acks.into_iter().map(|txid| ToCoordinator::Ack { txid }).collect();
        self.send(&mut acks);
    }

    /// Hands `messages` to the network (draining them), the spans they end ended first.
    fn send(&mut self, messages: &mut Vec<ToCoordinator>) {
        if let Some(trace) = &mut self.trace {
            trace.released(messages);
        }
        for message in messages.drain(..) {
            self.metrics.sent(&message);
            if let Err(err) = self.to_coordinator.push(&message) {
                tracing::error!("dropping a message to the coordinator: {err:?}");
            }
        }
        let frames = self.to_coordinator.take();
        // With no coordinator connected the messages are lost; it re-drives and we re-ask.
        if let Some(conn) = self.coordinators.serving()
            && !frames.is_empty()
        {
            self.metrics.frame_out(frames.len());
            self.transport.send(conn, frames);
        }
    }
}

impl Role for BackendRole {
    type Record = PartRecord;
    type Output = ToCoordinator;

    fn reactor(&mut self) -> &mut Reactor {
        &mut self.transport
    }

    fn on_inbound(&mut self, now: Time, inbound: Inbound, fx: &mut PartEffects) {
        match inbound {
            Inbound::Accepted { conn, identity, .. } if self.tls && !identity.authenticated => {
                super::refuse(&mut self.transport, conn, format!("{identity} is not authenticated"));
            }
            Inbound::Accepted { conn, hello, identity } if identity.role == NetRole::Coordinator => {
                let serving = self.coordinators.accept(conn, hello.epoch);
                self.metrics.coordinator_connected(true);
                tracing::info!(conn, coordinator = %identity, epoch = hello.epoch.0, serving, "coordinator connected");
                if serving {
                    self.engine.on_coordinator_connected(now, hello.epoch, fx);
                }
            }
            Inbound::Accepted { conn, .. } => {
                super::refuse(&mut self.transport, conn, "a database participant serves coordinators only".into())
            }
            Inbound::PeerUp { .. } | Inbound::PeerDown { .. } => {}
            Inbound::Frame { conn, frame } => {
                if self.coordinators.contains(conn) {
                    self.metrics.frame_in();
                }
                self.on_frame(now, conn, frame, fx)
            }
            Inbound::Closed { conn } => {
                let was_serving = self.coordinators.serving() == Some(conn);
                self.coordinators.close(conn);
                if was_serving {
                    self.engine.on_coordinator_lost(now, fx);
                }
                self.metrics.coordinator_connected(self.coordinators.serving().is_some());
            }
        }
    }

    fn on_tick(&mut self, now: Time, fx: &mut PartEffects) {
        self.drain_database(now, fx);
        // Also reports the resource manager's events (interactive executes' results).
        self.engine.on_tick(now, fx);
    }

    fn next_deadline(&self) -> Option<Time> {
        let driver = self.driver.borrow();
        if !driver.executor().completions().is_empty() {
            return Some(Time::ZERO); // Completions waiting: take them now.
        }
        [self.engine.next_deadline(), driver.next_deadline()].into_iter().flatten().min()
    }

    fn observe(&mut self, fx: &PartEffects) {
        if let Some(trace) = &mut self.trace {
            trace.observe(fx);
        }
    }

    fn after_step(&mut self, durable: Lsn) {
        if let Some(trace) = &mut self.trace {
            trace.after_step(durable);
        }
        let engine = &self.engine;
        self.snapshots.after_step(durable, engine.snapshot_lsn(), || engine.snapshot());
        self.metrics.after_step(engine, durable, &self.transport);
    }

    fn log_metrics(&mut self) -> Option<&mut crate::metrics::LogMetrics> {
        self.metrics.log()
    }

    /// Nothing this participant logs is waited on at once: its Yes waits for the database's
    /// PREPARE (and the epoch's record), acks for the database's commit, so every record
    /// rides with a group (at most `WalOptions::lazy_sync_within` later).
    fn urgent(&self, _record: &PartRecord) -> bool {
        false
    }

    fn route(&mut self, released: &mut Vec<ToCoordinator>) {
        let mut driver = self.driver.borrow_mut();
        let mut die_once_sent = false;
        let now = self.clock.now();
        released.retain(|message| match message {
            ToCoordinator::Ack { txid } => driver.ack_may_leave(*txid),
            ToCoordinator::Vote { txid, vote: Vote::Yes { .. } } => {
                if let Some(since) = self.yes_since.remove(txid) {
                    driver.vote_left(since, now);
                }
                // The database holds the transaction prepared and its Prepared record is
                // durable: the crash tests' "kill -9 after PREPARE" lands here.
                failpoint::hit(Failpoint::ParticipantPreparedDurable);
                die_once_sent |= failpoint::reached(Failpoint::ParticipantVoteSent);
                true
            }
            _ => true,
        });
        drop(driver);
        self.send(released);
        if die_once_sent {
            if !self.transport.flush(FAILPOINT_FLUSH_WAIT) {
                tracing::error!("failpoint participant-vote-sent: the network did not flush in time");
            }
            failpoint::fire(Failpoint::ParticipantVoteSent);
        }
    }
}

fn start_executor(
    options: &ParticipantOptions,
    backend: &BackendOptions,
    wake: twophase_backends::pool::Wake,
) -> anyhow::Result<Executor> {
    let config = PoolConfig { connections_max: backend.connections_max, ..PoolConfig::default() };
    if config.connections_max <= config.connections_reserved {
        bail!("--db-connections must be above {}", config.connections_reserved);
    }
    Gid::new(&options.name, 0, 0).map_err(|e| anyhow::anyhow!("--id cannot name database transactions: {e}"))?;
    let executor = match backend.kind {
        BackendKind::Postgres => {
            let connector = PgConnector::new(&backend.dsn)
                .context("--dsn")?
                .with_lock_wait_timeout(options.lock_wait_timeout)
                .with_session_name(&session_name(&options.name));
            Executor::start(connector, &options.name, config, Some(wake))
        }
        BackendKind::MariaDb => {
            let connector = MariaConnector::new(&backend.dsn)
                .context("--dsn")?
                .with_lock_wait_timeout(options.lock_wait_timeout)
                .with_session_name(&session_name(&options.name));
            Executor::start(connector, &options.name, config, Some(wake))
        }
    };
    Ok(executor)
}

/// Ends the previous incarnation's database sessions (a one-shot of the killed process may
/// still wait on a row lock there, and would reach its PREPARE after the scan below: a
/// prepared gid nobody resolves), then lists the gids of this participant prepared in the
/// database. Each is asked until the database answers.
fn fence_and_list_prepared(executor: &Executor, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<Vec<Gid>> {
    match ask_at_start(executor, Request::FenceSessions, stop)? {
        Reply::Fenced(0) => {}
        Reply::Fenced(ended) => tracing::info!(ended, "ended the previous incarnation's database sessions"),
        other => bail!("FenceSessions answered {other:?}"),
    }
    match ask_at_start(executor, Request::Recover, stop)? {
        Reply::Recovered(gids) => Ok(gids),
        other => bail!("Recover answered {other:?}"),
    }
}

/// One request at start, submitted again while the database is not reachable yet.
fn ask_at_start(executor: &Executor, request: Request, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<Reply> {
    loop {
        executor.submit(RECOVER_TAG, request.clone()).map_err(|e| anyhow::anyhow!("{request:?}: {e}"))?;
        let started = Instant::now();
        let result = loop {
            match executor.completions().recv_timeout(RECOVER_WAIT) {
                Ok(completion) if completion.tag == RECOVER_TAG => break completion.result,
                Ok(other) => tracing::warn!(tag = other.tag, "an unexpected completion at start"),
                Err(_) => bail!("the database did not answer {request:?} in {RECOVER_WAIT:?}"),
            }
            if started.elapsed() > RECOVER_WAIT {
                bail!("the database did not answer {request:?} in {RECOVER_WAIT:?}");
            }
        };
        match result {
            Ok(reply) => return Ok(reply),
            Err(DbError { reason: Reason::ConnectionLost | Reason::Busy, detail }) => {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    bail!("stopped while waiting for the database");
                }
                tracing::warn!("the database is not reachable yet ({detail}); trying again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => bail!("{request:?} at start: {error}"),
        }
    }
}

/// Adds to the snapshot (one just before the log when there is none) the transactions the
/// database holds prepared that neither it nor a `Prepared` record of the log names: each is
/// in doubt. The Yes of a transaction leaves once the database's PREPARE returned
/// (`BackendResource` is `PREPARE_DURABLE`), before its lazily synced record, so a crash can
/// leave a voted transaction known only to the database; and a snapshot drops transactions
/// the engine decided while their database decision may still be running. The engine asks
/// the coordinator about each (presumed abort answers for one that never voted; one decided
/// is still known there, as its ack waits for the database's decision). The database's gids
/// also raise the highest txid seen, so a late duplicate prepare of one is not run again.
/// Returns the snapshot and how many it gained.
fn with_unlogged_prepared(
    snapshot: Option<ParticipantSnapshot>,
    log: &[(Lsn, PartRecord)],
    in_database: &[Gid],
) -> (Option<ParticipantSnapshot>, usize) {
    let mut known: HashSet<TxId> = log
        .iter()
        .filter_map(|(_, record)| match record {
            PartRecord::Prepared { txid, .. } => Some(*txid),
            _ => None,
        })
        .collect();
    known.extend(snapshot.iter().flat_map(|s| s.prepared.iter().map(|(txid, _, _)| *txid)));
    let mut unlogged: Vec<TxId> =
        in_database.iter().map(|gid| TxId(gid.txid())).filter(|txid| !known.contains(txid)).collect();
    unlogged.sort_unstable();
    let Some(&highest) = unlogged.last() else { return (snapshot, 0) };
    let mut snapshot = snapshot.unwrap_or_else(|| ParticipantSnapshot {
        // Covers nothing of the log: it ends just before the first record.
        lsn: log.first().map_or(Lsn::NONE, |(first, _)| Lsn(first.0 - 1)),
        max_epoch: Epoch(0),
        max_txid_seen: TxId(0),
        kv: KvImage::default(),
        prepared: Vec::new(),
    });
    let count = unlogged.len();
    snapshot.max_txid_seen = snapshot.max_txid_seen.max(highest);
    snapshot.prepared.extend(unlogged.into_iter().map(|txid| (txid, Arc::from([]), Vec::new())));
    snapshot.prepared.sort_unstable_by_key(|(txid, _, _)| *txid);
    (Some(snapshot), count)
}

/// Runs a database participant until SIGINT/SIGTERM. Prints `listening on ADDR` once serving.
pub fn serve(options: ParticipantOptions, backend: BackendOptions) -> anyhow::Result<()> {
    let stop = super::stop_on_signal()?;
    let started = Instant::now();
    let (_lock, wal, recovery) = super::open_storage(&options.data_dir, &options.storage)?;
    let snapshot: Option<ParticipantSnapshot> = snapshot::load(&options.data_dir)?;
    let covered = snapshot.as_ref().map_or(Lsn::NONE, |s| s.lsn);
    let first_lsn = recovery.records.first().map(|record| Lsn(record.lsn.0));
    snapshot::check_log_continues(covered, first_lsn)?;
    let log = super::decode_log::<PartRecord>(recovery, covered)?;
    let replayed = log.len();

    let limits = NetLimits::default();
    let me = Hello {
        role: NetRole::Participant,
        cluster: options.cluster.clone(),
        node: options.name.clone(),
        epoch: Default::default(),
    };
    let security = options.security.load(&format!("participant {}", options.name))?;
    let tls = security.is_tls();
    let mut transport_config = TransportConfig::new(me, security);
    transport_config.listen = Some(options.listen);
    transport_config.accept_roles = vec![NetRole::Coordinator];
    transport_config.limits = limits;
    let (transport, addr): (Reactor, SocketAddr) = Reactor::new(transport_config).context("starting the network")?;
    let waker = transport.waker();
    let wake: twophase_backends::pool::Wake = Arc::new(move || {
        let _ = waker.wake();
    });
    let executor = start_executor(&options, &backend, wake)?;
    let in_database = fence_and_list_prepared(&executor, &stop)?;
    let (snapshot, unlogged) = with_unlogged_prepared(snapshot, &log, &in_database);
    let open_max = backend.connections_max - PoolConfig::default().connections_reserved;
    let driver = BackendDriver::new(
        options.id,
        &options.name,
        executor,
        backend.kind == BackendKind::MariaDb,
        open_max,
        in_database,
    );
    let driver = Rc::new(RefCell::new(driver));

    let mut config = ParticipantConfig::new(options.id);
    config.hash_seed = rand::random();
    config.lock_wait_timeout = options.lock_wait_timeout;
    let clock = Clock::new();
    let mut fx = PartEffects::default();
    let rm = BackendResource::new(driver.clone());
    let engine = Participant::recover_with(rm, config, snapshot, log, clock.now(), &mut fx);
    driver.borrow_mut().finish_recovery();
    tracing::info!(
        in_doubt = engine.in_doubt(),
        unlogged,
        snapshot_lsn = covered.0,
        replayed,
        "database participant recovered"
    );
    let wal = Arc::new(wal);
    let writer = Snapshotter::spawn(options.data_dir.clone(), wal.clone());
    let snapshots = SnapshotPolicy::new(options.snapshot_every_records, covered, writer);
    let info = NodeInfo {
        node: options.name.clone(),
        role: "participant",
        recovery: started.elapsed(),
        recovered_records: replayed as u64,
    };
    let metrics = ParticipantMetrics::serve(options.metrics_listen, info, snapshots.sources(&wal), clock)?;
    let trace = Exporter::start(&options.trace, "twophase-participant", &options.name)?.map(ParticipantTrace::new);
    println!("twophase participant {} listening on {addr}", options.name);
    super::pin_current_thread(options.pin_core);
    let mut role = BackendRole {
        engine,
        driver,
        transport,
        coordinators: CoordinatorLinks::default(),
        to_coordinator: BatchWriter::new(&limits),
        tls,
        clock,
        snapshots,
        yes_since: HashMap::new(),
        metrics,
        trace,
    };
    let result = super::run(&mut role, fx, &wal, clock, &stop);
    let pending = role.driver.borrow().decisions_pending();
    if pending > 0 {
        tracing::warn!(pending, "stopping with decisions not yet in the database; the next start finishes them");
    }
    // The network and the database pool go first (as the key-value participant's network
    // does), then the snapshot writer finishes and lets go of the log.
    let BackendRole { snapshots, engine, driver, transport, .. } = role;
    drop((engine, driver, transport));
    snapshots.shutdown();
    let wal = Arc::try_unwrap(wal).unwrap_or_else(|_| unreachable!("the snapshot thread is gone"));
    let closed = wal.close().context("closing the log");
    result?;
    closed?;
    tracing::info!("database participant stopped");
    Ok(())
}
