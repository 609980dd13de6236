//! The participant node: serves the built-in key-value store to the coordinator that
//! connects to it, and snapshots its state so restarts replay only a short log tail.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use twophase_engine::participant::{PartEffects, Participant, ParticipantConfig, ParticipantSnapshot};
use twophase_engine::{Lsn, PartRecord, ParticipantId, Time, ToCoordinator, Vote};
use twophase_net::{
    AdminOp, BatchWriter, ConnId, DumpEnd, Frame, Hello, Inbound, NetLimits, Reactor, Role as NetRole, TransportConfig,
};

use super::snapshot::{self, SnapshotPolicy, Snapshotter};
use super::{Clock, Role, Storage};
use crate::failpoint::{self, Failpoint};

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
}

pub struct ParticipantRole {
    engine: Participant,
    transport: Reactor,
    coordinators: HashSet<ConnId>,
    admins: HashSet<ConnId>,
    /// Messages go to the coordinator that connected last.
    coordinator: Option<ConnId>,
    to_coordinator: BatchWriter<ToCoordinator>,
    snapshots: SnapshotPolicy<ParticipantSnapshot>,
    /// Whether the log is fdatasynced (reported in dumps, so a load report can say so).
    fsync: bool,
}

impl ParticipantRole {
    fn on_frame(&mut self, now: Time, conn: ConnId, frame: Frame, fx: &mut PartEffects) {
        match frame {
            Frame::ToParticipant { epoch, messages } if self.coordinators.contains(&conn) => {
                if let Err(refused) = self.engine.check_frame(epoch, &messages) {
                    tracing::warn!(conn, "refusing a coordinator frame: {refused}");
                    return super::refuse(&mut self.transport, conn, format!("frame refused: {refused}"));
                }
                for message in messages {
                    if let Err(refused) = self.engine.on_message(now, epoch, message, fx) {
                        tracing::warn!(conn, "refusing a coordinator message: {refused}");
                    }
                }
            }
            Frame::AdminRequest(AdminOp::Dump) if self.admins.contains(&conn) => self.send_dump(conn),
            other => super::refuse(
                &mut self.transport,
                conn,
                format!("a participant does not serve {:?} frames on this connection", other.kind()),
            ),
        }
    }
}

impl ParticipantRole {
    /// The whole key-value state, in frames of about [`DUMP_CHUNK_BYTES`], then the counts.
    fn send_dump(&mut self, conn: ConnId) {
        let mut frames = Vec::new();
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        for (key, value) in self.engine.kv().iter() {
            chunk_bytes += key.len() + value.len() + 6;
            chunk.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
            if chunk_bytes >= DUMP_CHUNK_BYTES {
                Frame::DumpChunk(std::mem::take(&mut chunk)).encode(&mut frames);
                chunk_bytes = 0;
            }
        }
        Frame::DumpChunk(chunk).encode(&mut frames);
        let end = DumpEnd {
            keys: self.engine.kv().len() as u64,
            prepared: self.engine.prepared() as u32,
            in_doubt: self.engine.in_doubt() as u32,
            fsync: self.fsync,
        };
        Frame::DumpEnd(end).encode(&mut frames);
        self.transport.send(conn, Bytes::from(frames));
    }
}

/// Dump frames stay far below the 16 MiB frame limit.
const DUMP_CHUNK_BYTES: usize = 1 << 20;

impl Role for ParticipantRole {
    type Record = PartRecord;
    type Output = ToCoordinator;

    fn reactor(&mut self) -> &mut Reactor {
        &mut self.transport
    }

    fn on_inbound(&mut self, now: Time, inbound: Inbound, fx: &mut PartEffects) {
        match inbound {
            Inbound::Accepted { conn, hello } if hello.role == NetRole::Coordinator => {
                tracing::info!(conn, coordinator = %hello.node, epoch = hello.epoch.0, "coordinator connected");
                self.coordinators.insert(conn);
                self.coordinator = Some(conn);
                // Whatever is in doubt can be resolved now rather than at the next backoff step.
                self.engine.on_coordinator_connected(now, hello.epoch, fx);
            }
            Inbound::Accepted { conn, hello } if hello.role == NetRole::Admin => {
                self.admins.insert(conn);
            }
            Inbound::Accepted { .. } | Inbound::PeerUp { .. } | Inbound::PeerDown { .. } => {}
            Inbound::Frame { conn, frame } => self.on_frame(now, conn, frame, fx),
            Inbound::Closed { conn } => {
                self.admins.remove(&conn);
                self.coordinators.remove(&conn);
                if self.coordinator == Some(conn) {
                    self.coordinator = None;
                }
            }
        }
    }

    fn on_tick(&mut self, now: Time, fx: &mut PartEffects) {
        self.engine.on_tick(now, fx);
    }

    fn next_deadline(&self) -> Option<Time> {
        self.engine.next_deadline()
    }

    fn route(&mut self, released: &mut Vec<ToCoordinator>) {
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
            if let Err(err) = self.to_coordinator.push(&message) {
                tracing::error!("dropping a message to the coordinator: {err:?}");
            }
        }
        let frames = self.to_coordinator.take();
        // With no coordinator connected the messages are lost; it re-drives and we re-ask.
        if let Some(conn) = self.coordinator
            && !frames.is_empty()
        {
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
        let engine = &self.engine;
        self.snapshots.after_step(durable, engine.snapshot_lsn(), || engine.snapshot());
    }
}

/// Runs a participant until SIGINT/SIGTERM. Prints `listening on ADDR` once serving.
pub fn serve(options: ParticipantOptions) -> anyhow::Result<()> {
    let stop = super::stop_on_signal()?;
    let (_lock, wal, recovery) = super::open_storage(&options.data_dir, &options.storage)?;
    let snapshot: Option<ParticipantSnapshot> = snapshot::load(&options.data_dir)?;
    let covered = snapshot.as_ref().map_or(Lsn::NONE, |s| s.lsn);
    let first_lsn = recovery.records.first().map(|record| Lsn(record.lsn.0));
    snapshot::check_log_continues(covered, first_lsn)?;
    let log = super::decode_log::<PartRecord>(recovery, covered)?;
    let mut config = ParticipantConfig::new(options.id);
    config.hash_seed = rand::random();
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
    let mut transport_config = TransportConfig::new(me);
    transport_config.listen = Some(options.listen);
    transport_config.accept_roles = vec![NetRole::Coordinator, NetRole::Admin];
    transport_config.limits = limits;
    let (transport, addr) = Reactor::new(transport_config).context("starting the network")?;
    println!("twophase participant {} listening on {addr}", options.name);
    super::pin_current_thread(options.pin_core);

    let wal = Arc::new(wal);
    let writer = Snapshotter::spawn(options.data_dir.clone(), wal.clone());
    let snapshots = SnapshotPolicy::new(options.snapshot_every_records, covered, writer);
    let mut role = ParticipantRole {
        engine,
        transport,
        coordinators: HashSet::new(),
        admins: HashSet::new(),
        coordinator: None,
        to_coordinator: BatchWriter::new(&limits),
        snapshots,
        fsync: !options.storage.unsafe_no_fsync,
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
