//! The participant node: serves the built-in key-value store to the coordinator that
//! connects to it, and snapshots its state so restarts replay only a short log tail.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use twophase_engine::participant::{PartEffects, Participant, ParticipantConfig, ParticipantSnapshot};
use twophase_engine::{Lsn, PartRecord, ParticipantId, Time, ToCoordinator, Vote};
use twophase_net::{
    AdminOp, BatchWriter, ConnId, Frame, Hello, Inbound, NetLimits, Reactor, Role as NetRole, TransportConfig,
};

use super::coordinator_links::CoordinatorLinks;
use super::dump::DumpStreams;
use super::snapshot::{self, SnapshotPolicy, Snapshotter};
use super::{Clock, Role, Storage};
use crate::failpoint::{self, Failpoint};
use crate::metrics::{NodeInfo, ParticipantMetrics};
use crate::trace::participant::ParticipantTrace;
use crate::trace::{Exporter, TraceArgs};

/// Longest a failpoint that fires after a send waits for the bytes to leave.
const FAILPOINT_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ParticipantOptions {
    pub name: String,
    pub id: ParticipantId,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cluster: String,
    /// Take a snapshot after this many log records (0: never).
    pub snapshot_every_records: u64,
    pub storage: Storage,
    pub pin_core: Option<usize>,
    /// Longest an interactive transaction's statement waits for a lock (`--lock-wait-timeout`).
    pub lock_wait_timeout: std::time::Duration,
    /// The cluster CA, this node's certificate and key, or no TLS at all.
    pub security: crate::security::TlsFiles,
    pub trace: TraceArgs,
    /// Serve Prometheus metrics here (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
}

pub struct ParticipantRole {
    engine: Participant,
    transport: Reactor,
    /// Messages go to the serving one: the live coordinator connection of the highest epoch.
    coordinators: CoordinatorLinks,
    admins: HashSet<ConnId>,
    to_coordinator: BatchWriter<ToCoordinator>,
    snapshots: SnapshotPolicy<ParticipantSnapshot>,
    /// Whether the log is fdatasynced (reported in dumps, so a load report can say so).
    fsync: bool,
    /// Whether connections are mutual TLS (then every peer must be authenticated).
    tls: bool,
    dumps: DumpStreams,
    /// Spans of sampled transactions; `None` when tracing is off.
    trace: Option<ParticipantTrace>,
    metrics: ParticipantMetrics,
}

impl ParticipantRole {
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
            Frame::AdminRequest(AdminOp::Dump) if self.admins.contains(&conn) => {
                self.dumps.start(&mut self.transport, conn)
            }
            other => super::refuse(
                &mut self.transport,
                conn,
                format!("a participant does not serve {:?} frames on this connection", other.kind()),
            ),
        }
    }
}

impl Role for ParticipantRole {
    type Record = PartRecord;
    type Output = ToCoordinator;

    fn reactor(&mut self) -> &mut Reactor {
        &mut self.transport
    }

    fn on_inbound(&mut self, now: Time, inbound: Inbound, fx: &mut PartEffects) {
        match inbound {
            Inbound::Accepted { conn, identity, .. } if self.tls && !identity.authenticated => {
                // The transport admits no unauthenticated peer under TLS; never serve one.
                super::refuse(&mut self.transport, conn, format!("{identity} is not authenticated"));
            }
            Inbound::Accepted { conn, hello, identity } if identity.role == NetRole::Coordinator => {
                let serving = self.coordinators.accept(conn, hello.epoch);
                self.metrics.coordinator_connected(true);
                tracing::info!(conn, coordinator = %identity, epoch = hello.epoch.0, serving, "coordinator connected");
                if serving {
                    // Whatever is in doubt can be resolved now rather than at the next backoff step.
                    self.engine.on_coordinator_connected(now, hello.epoch, fx);
                }
            }
            Inbound::Accepted { conn, identity, .. } if identity.role == NetRole::Admin => {
                self.admins.insert(conn);
            }
            Inbound::Accepted { .. } | Inbound::PeerUp { .. } | Inbound::PeerDown { .. } => {}
            Inbound::Frame { conn, frame } => {
                if self.coordinators.contains(conn) {
                    self.metrics.frame_in();
                }
                self.on_frame(now, conn, frame, fx)
            }
            Inbound::Closed { conn } => {
                self.admins.remove(&conn);
                self.dumps.forget(conn);
                let was_serving = self.coordinators.serving() == Some(conn);
                let closed = self.coordinators.close(conn);
                if was_serving {
                    // Its open interactive transactions can never be committed through this
                    // connection: roll them back now so that none holds a lock forever
                    // (presumed abort allows it; they never voted).
                    self.engine.on_coordinator_lost(now, fx);
                }
                self.metrics.coordinator_connected(self.coordinators.serving().is_some());
                if let Some(next) = closed {
                    tracing::info!(
                        closed = conn,
                        serving = next,
                        "the serving coordinator connection closed; answering another"
                    );
                }
            }
        }
    }

    fn on_tick(&mut self, now: Time, fx: &mut PartEffects) {
        self.engine.on_tick(now, fx);
    }

    fn next_deadline(&self) -> Option<Time> {
        match (self.engine.next_deadline(), self.dumps.next_deadline()) {
            (Some(engine), Some(dump)) => Some(engine.min(dump)),
            (engine, dump) => engine.or(dump),
        }
    }

    fn observe(&mut self, fx: &PartEffects) {
        if let Some(trace) = &mut self.trace {
            trace.observe(fx);
        }
    }

    fn route(&mut self, released: &mut Vec<ToCoordinator>) {
        if let Some(trace) = &mut self.trace {
            trace.released(released);
        }
        let mut die_once_sent = false;
        for message in released.drain(..) {
            match &message {
                ToCoordinator::Vote { vote: Vote::Yes { .. }, .. } => {
                    failpoint::hit(Failpoint::ParticipantPreparedDurable);
                    die_once_sent |= failpoint::reached(Failpoint::ParticipantVoteSent);
                }
                ToCoordinator::Ack { .. } => failpoint::hit(Failpoint::ParticipantCommittedApplied),
                _ => {}
            }
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
        if die_once_sent {
            if !self.transport.flush(FAILPOINT_FLUSH_WAIT) {
                tracing::error!("failpoint participant-vote-sent: the network did not flush in time");
            }
            failpoint::fire(Failpoint::ParticipantVoteSent);
        }
    }

    fn after_step(&mut self, durable: Lsn) {
        if let Some(trace) = &mut self.trace {
            trace.after_step(durable);
        }
        let engine = &self.engine;
        self.snapshots.after_step(durable, engine.snapshot_lsn(), || engine.snapshot());
        self.metrics.after_step(engine, durable, &self.transport);
        self.dumps.pump(&self.engine, &mut self.transport, self.fsync);
    }

    fn appended(&mut self, record: &PartRecord) {
        self.dumps.on_record(record);
    }

    fn log_metrics(&mut self) -> Option<&mut crate::metrics::LogMetrics> {
        self.metrics.log()
    }
}

/// Runs a participant until SIGINT/SIGTERM. Prints `listening on ADDR` once serving.
pub fn serve(options: ParticipantOptions) -> anyhow::Result<()> {
    let stop = super::stop_on_signal()?;
    let started = std::time::Instant::now();
    let (_lock, wal, recovery) = super::open_storage(&options.data_dir, &options.storage)?;
    let snapshot: Option<ParticipantSnapshot> = snapshot::load(&options.data_dir)?;
    let covered = snapshot.as_ref().map_or(Lsn::NONE, |s| s.lsn);
    let first_lsn = recovery.records.first().map(|record| Lsn(record.lsn.0));
    snapshot::check_log_continues(covered, first_lsn)?;
    let log = super::decode_log::<PartRecord>(recovery, covered)?;
    let recovered_records = log.len() as u64;
    let mut config = ParticipantConfig::new(options.id);
    config.hash_seed = rand::random();
    config.lock_wait_timeout = options.lock_wait_timeout;
    let clock = Clock::new();
    let mut fx = PartEffects::default();
    let engine = Participant::recover(config, snapshot, log, clock.now(), &mut fx);
    tracing::info!(keys = engine.kv().len(), in_doubt = engine.in_doubt(), "participant recovered");

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
    transport_config.accept_roles = vec![NetRole::Coordinator, NetRole::Admin];
    transport_config.limits = limits;
    let (transport, addr) = Reactor::new(transport_config).context("starting the network")?;
    let trace = Exporter::start(&options.trace, "twophase-participant", &options.name)?.map(ParticipantTrace::new);
    let wal = Arc::new(wal);
    let writer = Snapshotter::spawn(options.data_dir.clone(), wal.clone());
    let snapshots = SnapshotPolicy::new(options.snapshot_every_records, covered, writer);
    let info =
        NodeInfo { node: options.name.clone(), role: "participant", recovery: started.elapsed(), recovered_records };
    let metrics = ParticipantMetrics::serve(options.metrics_listen, info, snapshots.sources(&wal), clock)?;
    println!("twophase participant {} listening on {addr}", options.name);
    super::pin_current_thread(options.pin_core);

    let mut role = ParticipantRole {
        engine,
        transport,
        coordinators: CoordinatorLinks::default(),
        admins: HashSet::new(),
        to_coordinator: BatchWriter::new(&limits),
        snapshots,
        fsync: !options.storage.unsafe_no_fsync,
        tls,
        dumps: DumpStreams::new(clock),
        trace,
        metrics,
    };
    let result = super::run(&mut role, fx, &wal, clock, &stop);
    drop(role.transport);
    role.snapshots.shutdown();
    let wal = Arc::try_unwrap(wal).unwrap_or_else(|_| unreachable!("the snapshot thread is gone"));
    let closed = wal.close().context("closing the log");
    result?;
    closed?;
    tracing::info!("participant stopped");
    Ok(())
}
