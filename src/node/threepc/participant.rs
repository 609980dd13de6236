//! The 3PC participant node: `ThreePcParticipant` over the built-in store (`store`), the
//! coordinator's connection (accepted), and a link to every other participant for the
//! termination protocol: this node dials each one given by `--threepc-peer NAME=ADDR` and
//! sends to it on that link; what a peer sends arrives on the link it dialled, whose
//! sender is who its certificate (or, under `--insecure-plaintext`, its Hello) says.
//!
//! The state machine asks the resource manager to prepare as an output; this runtime
//! answers at once, in the same step (the store prepares synchronously), and writes the
//! prepared write set into the `Uncertain` record (`PartLog3`). A decision's `Apply` is
//! gated on the `Decided` record like any output: the store changes only once it is durable.
//!
//! Answers the admin `Dump` like the 2PC participant (the whole store in chunks, then
//! `DumpEnd` whose `prepared` counts undecided transactions and write sets not yet applied),
//! so the demo's audit and settling work unchanged. Not here yet: snapshots (the log
//! replays whole), metrics, tracing, a streamed dump (the whole dump is queued at once).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use twophase_engine::threepc::{Message, PartEffects3, PartLog3, PartOutput, Peer, ThreePcParticipant};
use twophase_engine::{Effects, Gated, Lsn, ParticipantId, Time};
use twophase_net::{
    AdminOp, BatchWriter, ConnId, DumpEnd, Frame, Hello, Inbound, NetLimits, PeerId, Reactor, Role as NetRole,
    ThreePcItem, TransportConfig,
};

use super::super::participant::ParticipantOptions;
use super::super::{Clock, Role};
use super::store::{Refusal, Store3};
use super::{DECIDED_MAX, TXS_MAX, Ticker, timeouts};
use crate::metrics::{NodeInfo, Sources, ThreePcMetrics};

/// A `DumpChunk` frame is closed once its entries take this many bytes.
const CHUNK_BYTES: usize = 1 << 20;

/// What a 3PC participant needs besides the 2PC participant's options.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// Every other participant's name and address.
    pub peers: Vec<(String, SocketAddr)>,
}

type Fx = Effects<PartLog3, PartOutput>;

pub struct ThreePcParticipantRole {
    id: ParticipantId,
    engine: ThreePcParticipant,
    store: Store3,
    transport: Reactor,
    limits: NetLimits,
    ticker: Ticker,
    /// Accepted coordinator connections; messages go to the latest.
    coordinators: Vec<ConnId>,
    admins: HashSet<ConnId>,
    /// Who sends on each connection from another participant (accepted or dialled).
    participant_of_conn: HashMap<ConnId, ParticipantId>,
    /// The link this node sends to each peer on (dialled, up).
    link_to: HashMap<ParticipantId, ConnId>,
    to_coordinator: BatchWriter<ThreePcItem>,
    to_peers: HashMap<ParticipantId, BatchWriter<ThreePcItem>>,
    /// The state machine's effects, before their records gain the prepared write sets.
    scratch: PartEffects3,
    /// Whether the log is fdatasynced (reported in dumps).
    fsync: bool,
    tls: bool,
    metrics: ThreePcMetrics,
}

impl ThreePcParticipantRole {
    /// Moves what the state machine did into `fx`, answering its prepare requests on the
    /// way (which may make it log and send more: repeated until it asks nothing).
    fn drain(&mut self, fx: &mut Fx) {
        while !self.scratch.is_empty() {
            let appends = std::mem::take(&mut self.scratch.appends);
            let outputs = std::mem::take(&mut self.scratch.outputs);
            for (lsn, record) in appends {
                let writes = match &record {
                    twophase_engine::threepc::PartRecord3::Uncertain { txid, .. } => self.store.writes(*txid),
                    _ => Vec::new(),
                };
                fx.appends.push((lsn, PartLog3::new(record, writes)));
            }
            for output in outputs {
                match output.item {
                    PartOutput::Prepare { txid, payload } => {
                        assert_eq!(output.after, Lsn::NONE, "a prepare request waits for nothing");
                        let yes = match self.store.prepare(txid, &payload) {
                            Ok(()) => true,
                            Err(refusal) => {
                                log_refusal(txid, &refusal);
                                false
                            }
                        };
                        self.engine.prepared(txid, yes, &mut self.scratch);
                    }
                    item => fx.outputs.push(Gated { after: output.after, item }),
                }
            }
        }
    }

    fn on_message(&mut self, from: Peer, item: ThreePcItem, fx: &mut Fx) {
        if item.from != from || item.to != Peer::Participant(self.id) {
            tracing::warn!(?from, "dropping a 3pc message sent as {:?} to {:?}", item.from, item.to);
            return;
        }
        self.engine.on_message(from, item.message, &mut self.scratch);
        self.drain(fx);
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, fx: &mut Fx) {
        match frame {
            Frame::ThreePc(items) if self.coordinators.contains(&conn) => {
                for item in items {
                    self.on_message(Peer::Coordinator, item, fx);
                }
            }
            Frame::ThreePc(items) if self.participant_of_conn.contains_key(&conn) => {
                let from = Peer::Participant(self.participant_of_conn[&conn]);
                for item in items {
                    self.on_message(from, item, fx);
                }
            }
            Frame::AdminRequest(AdminOp::Dump) if self.admins.contains(&conn) => self.dump(conn),
            other => super::super::refuse(
                &mut self.transport,
                conn,
                format!("a 3pc participant does not serve {:?} frames on this connection", other.kind()),
            ),
        }
    }

    /// The whole store in `DumpChunk` frames, then `DumpEnd`.
    fn dump(&mut self, conn: ConnId) {
        let mut frames = Vec::new();
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        let kv = self.store.kv();
        for (key, value) in kv.iter() {
            chunk_bytes += key.len() + value.len() + 6;
            chunk.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
            if chunk_bytes >= CHUNK_BYTES {
                Frame::DumpChunk(std::mem::take(&mut chunk)).encode(&mut frames);
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            Frame::DumpChunk(chunk).encode(&mut frames);
        }
        let prepared = self.engine.undecided() + self.store.prepared();
        let end = DumpEnd {
            keys: kv.len() as u64,
            prepared: u32::try_from(prepared).unwrap_or(u32::MAX),
            in_doubt: 0,
            fsync: self.fsync,
        };
        Frame::DumpEnd(end).encode(&mut frames);
        self.transport.send(conn, Bytes::from(frames));
    }

    fn send(&mut self, to: Peer, message: Message) {
        let item = ThreePcItem { from: Peer::Participant(self.id), to, message };
        let limits = self.limits;
        let writer = match to {
            Peer::Coordinator => &mut self.to_coordinator,
            Peer::Participant(peer) => self.to_peers.entry(peer).or_insert_with(|| BatchWriter::new(&limits)),
        };
        if let Err(err) = writer.push(&item) {
            tracing::error!(?to, "dropping a 3pc message: {err}");
        }
    }

    fn flush(&mut self) {
        let mut frames: Vec<(ConnId, Bytes)> = Vec::new();
        if !self.to_coordinator.is_empty() {
            let bytes = self.to_coordinator.take();
            // With no coordinator connected the messages are lost; 3PC resends.
            if let Some(&conn) = self.coordinators.last() {
                frames.push((conn, bytes));
            }
        }
        for (peer, writer) in &mut self.to_peers {
            if writer.is_empty() {
                continue;
            }
            let bytes = writer.take();
            if let Some(&conn) = self.link_to.get(peer) {
                frames.push((conn, bytes));
            }
        }
        if !frames.is_empty() {
            self.transport.send_many(frames);
        }
    }
}

fn log_refusal(txid: twophase_engine::TxId, refusal: &Refusal) {
    match refusal {
        Refusal::Malformed(detail) => tracing::warn!(%txid, "3pc CanCommit payload refused: {detail}"),
        Refusal::Locked { .. } | Refusal::Refused(_) => tracing::debug!(%txid, "voting No: {refusal:?}"),
    }
}

impl Role for ThreePcParticipantRole {
    type Record = PartLog3;
    type Output = PartOutput;

    fn reactor(&mut self) -> &mut Reactor {
        &mut self.transport
    }

    fn on_inbound(&mut self, _now: Time, inbound: Inbound, fx: &mut Fx) {
        match inbound {
            Inbound::Accepted { conn, identity, .. } if self.tls && !identity.authenticated => {
                super::super::refuse(&mut self.transport, conn, format!("{identity} is not authenticated"));
            }
            Inbound::Accepted { conn, identity, .. } => match identity.role {
                NetRole::Coordinator => {
                    tracing::info!(conn, coordinator = %identity, "3pc coordinator connected");
                    self.coordinators.push(conn);
                }
                NetRole::Admin => {
                    self.admins.insert(conn);
                }
                NetRole::Participant => match crate::names::participant_id(&identity.name) {
                    Ok(peer) if peer != self.id => {
                        self.participant_of_conn.insert(conn, peer);
                    }
                    _ => super::super::refuse(&mut self.transport, conn, format!("{identity} is no peer of this one")),
                },
                NetRole::Client => {
                    super::super::refuse(&mut self.transport, conn, "clients go to the coordinator".into())
                }
            },
            Inbound::PeerUp { peer, conn, .. } => {
                let peer = ParticipantId(peer.0 as u16);
                tracing::info!(%peer, conn, "3pc peer link up");
                self.link_to.insert(peer, conn);
                self.participant_of_conn.insert(conn, peer);
            }
            Inbound::PeerDown { peer } => {
                let peer = ParticipantId(peer.0 as u16);
                if let Some(conn) = self.link_to.remove(&peer) {
                    self.participant_of_conn.remove(&conn);
                }
            }
            Inbound::Frame { conn, frame } => self.on_frame(conn, frame, fx),
            Inbound::Closed { conn } => {
                self.admins.remove(&conn);
                self.coordinators.retain(|open| *open != conn);
                self.participant_of_conn.remove(&conn);
            }
        }
    }

    fn on_tick(&mut self, now: Time, fx: &mut Fx) {
        for _ in 0..self.ticker.due(now) {
            self.engine.tick(&mut self.scratch);
        }
        self.drain(fx);
    }

    fn next_deadline(&self) -> Option<Time> {
        Some(self.ticker.next_deadline())
    }

    fn after_step(&mut self, durable: Lsn) {
        self.metrics.after_step(self.engine.undecided(), durable, &self.transport);
    }

    fn log_metrics(&mut self) -> Option<&mut crate::metrics::LogMetrics> {
        self.metrics.log()
    }

    fn route(&mut self, released: &mut Vec<PartOutput>) {
        for output in released.drain(..) {
            match output {
                PartOutput::Send(envelope) => self.send(envelope.to, envelope.message),
                PartOutput::Apply { txid, commit } => {
                    self.metrics.applied(commit);
                    self.store.finish(txid, commit)
                }
                PartOutput::SplitDecision { txid, ours, heard, from } => {
                    self.metrics.split_decision();
                    tracing::error!(
                        %txid,
                        ours,
                        heard,
                        ?from,
                        "3pc split decision: a peer decided otherwise (a partition broke the network bound); keeping ours"
                    )
                }
                PartOutput::Warning(warning) => tracing::warn!("{warning}"),
                PartOutput::Prepare { .. } => unreachable!("prepare requests are answered in the step"),
            }
        }
        self.flush();
    }
}

/// Runs a 3PC participant until SIGINT/SIGTERM. Prints `listening on ADDR` once serving.
pub fn serve(options: ParticipantOptions, peers: PeerOptions) -> anyhow::Result<()> {
    let stop = super::super::stop_on_signal()?;
    let started = std::time::Instant::now();
    let (_lock, wal, recovery) = super::super::open_storage(&options.data_dir, &options.storage)?;
    let log = super::super::decode_log::<PartLog3>(recovery, Lsn::NONE)?;
    let recovered_records = log.len() as u64;
    let hash_seed = rand::random();
    let store = Store3::recover(options.id, hash_seed, &log);
    let records = log.into_iter().map(|(lsn, entry)| (lsn, entry.record)).collect();
    let engine = ThreePcParticipant::recover(options.id, timeouts(), TXS_MAX, DECIDED_MAX, records);
    tracing::info!(keys = store.kv().len(), undecided = engine.undecided(), "3pc participant recovered");

    let me = Hello {
        role: NetRole::Participant,
        cluster: options.cluster.clone(),
        node: options.name.clone(),
        epoch: Default::default(),
    };
    let security = options.security.load(&format!("participant {}", options.name))?;
    let tls = security.is_tls();
    let mut config = TransportConfig::new(me, security);
    config.listen = Some(options.listen);
    config.accept_roles = vec![NetRole::Coordinator, NetRole::Admin, NetRole::Participant];
    let (mut transport, addr) = Reactor::new(config).context("starting the network")?;
    for (name, address) in &peers.peers {
        let id = crate::names::participant_id(name)?;
        anyhow::ensure!(id != options.id, "--threepc-peer {name}: that is this participant");
        transport.add_peer(PeerId(u64::from(id.0)), *address, name.clone());
    }
    let clock = Clock::new();
    let info =
        NodeInfo { node: options.name.clone(), role: "participant", recovery: started.elapsed(), recovered_records };
    let metrics = ThreePcMetrics::serve(options.metrics_listen, info, None, Sources::without_snapshots(&wal), clock)?;
    println!("twophase participant {} (3pc) listening on {addr}", options.name);
    super::super::pin_current_thread(options.pin_core);
    let limits = NetLimits::default();
    let mut role = ThreePcParticipantRole {
        id: options.id,
        engine,
        store,
        transport,
        limits,
        ticker: Ticker::new(clock.now()),
        coordinators: Vec::new(),
        admins: HashSet::new(),
        participant_of_conn: HashMap::new(),
        link_to: HashMap::new(),
        to_coordinator: BatchWriter::new(&limits),
        to_peers: HashMap::new(),
        scratch: PartEffects3::default(),
        fsync: !options.storage.unsafe_no_fsync,
        tls,
        metrics,
    };
    let result = super::super::run(&mut role, Fx::default(), &wal, clock, &stop);
    drop(role.transport);
    let closed = wal.close();
    result?;
    closed.context("closing the log")?;
    tracing::info!("3pc participant stopped");
    Ok(())
}

/// `--threepc-peer NAME=HOST:PORT` flags.
pub fn parse_peers(specs: &[String]) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, address) =
                spec.split_once('=').with_context(|| format!("--threepc-peer {spec}: expected NAME=HOST:PORT"))?;
            let resolved = super::super::coordinator::resolve(address)?;
            Ok((name.to_string(), resolved))
        })
        .collect()
}
