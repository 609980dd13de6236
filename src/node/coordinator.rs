//! The coordinator node: clients connect to it; it connects to every participant.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use twophase_engine::coordinator::{
    ClientOrigin, CoordEffects, CoordOutput, Coordinator, CoordinatorConfig, CoordinatorSnapshot,
};
use twophase_engine::{ClientId, CoordRecord, Epoch, Lsn, ParticipantId, Reply, Time, ToParticipant};
use twophase_net::{
    AdminOp, BatchWriter, ConnId, DumpEnd, Frame, Hello, Inbound, NetLimits, PeerId, PeerIdentity, Reactor,
    Role as NetRole, TransportConfig,
};

use super::held_frames::HeldFrames;
use super::snapshot::{self, SnapshotPolicy, Snapshotter};
use super::{Clock, Role, Storage};
use crate::failpoint::{self, Failpoint};
use crate::metrics::{CoordinatorMetrics, NodeInfo};
use crate::trace::coordinator::CoordinatorTrace;
use crate::trace::{Exporter, TraceArgs};

/// A connection may speak for this many distinct client sessions at most.
const MAX_CLIENTS_PER_CONN: usize = 4096;
/// Room a `Replies` frame needs besides one encoded outcome: frame header, batch count, and
/// the reply's tag, client and seq (with margin).
const REPLY_OVERHEAD_BYTES: usize = 64;

/// The identity a client connection speaks for, which its sessions are bound to: the name its
/// certificate proves (with TLS the transport admitted it only if its Hello claims the same),
/// or, under `--insecure-plaintext`, the name its Hello claims.
fn connection_identity(identity: &PeerIdentity) -> String {
    identity.name.clone()
}
/// Longest the `listening on` line waits for every participant to be connected.
const READY_WAIT: Duration = Duration::from_secs(5);
/// Longest a failpoint that fires after a send waits for the bytes to leave.
const FAILPOINT_FLUSH_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    pub id: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cluster: String,
    /// (id, name, address) of every participant.
    pub participants: Vec<(ParticipantId, String, String)>,
    pub prepare_timeout: Duration,
    pub max_in_flight: usize,
    pub storage: Storage,
    pub pin_core: Option<usize>,
    /// Checkpoint (and truncate the log) every this many records; 0 never.
    pub checkpoint_every_records: u64,
    /// The cluster CA, this node's certificate and key, or no TLS at all.
    pub security: crate::security::TlsFiles,
    pub trace: TraceArgs,
    /// Serve Prometheus metrics here (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
    /// The replicated group, (name, address) of every coordinator in it, this one included;
    /// empty for a single coordinator (see `super::replicated`).
    pub group: Vec<(String, String)>,
}

pub struct CoordinatorRole {
    engine: Coordinator,
    transport: Reactor,
    limits: NetLimits,
    peer_conn: HashMap<ParticipantId, ConnId>,
    peer_of_conn: HashMap<ConnId, ParticipantId>,
    client_conn: HashMap<ClientId, ConnId>,
    clients_of_conn: HashMap<ConnId, Vec<ClientId>>,
    /// Each open client connection's identity ([`connection_identity`]).
    identity_of_conn: HashMap<ConnId, String>,
    to_participants: HashMap<ParticipantId, BatchWriter<ToParticipant>>,
    to_clients: HashMap<ConnId, BatchWriter<Reply>>,
    /// Frames for participants not connected yet since this role started.
    held: HeldFrames,
    /// Every participant's id, name and address, for admin `Topology` requests.
    topology: Vec<(ParticipantId, String, String)>,
    /// The `listening on` line, held back until every participant is connected (or the
    /// deadline passes), so that whoever waits for it can submit at once without racing
    /// the coordinator's own connections.
    announcement: Option<(String, Instant)>,
    /// `None` in a replicated group: its log is compacted by Raft snapshots instead.
    checkpoints: Option<SnapshotPolicy<CoordinatorSnapshot>>,
    /// Spans of sampled transactions; `None` when tracing is off.
    trace: Option<CoordinatorTrace>,
    metrics: CoordinatorMetrics,
}

impl CoordinatorRole {
    /// Prints the held-back `listening on` line once every participant is connected, or
    /// with a warning once the deadline has passed.
    fn announce_when_ready(&mut self) {
        let Some((line, deadline)) = &self.announcement else { return };
        let all_connected = self.peer_conn.len() == self.topology.len();
        if !all_connected && Instant::now() < *deadline {
            return;
        }
        if !all_connected {
            tracing::warn!(
                connected = self.peer_conn.len(),
                participants = self.topology.len(),
                "serving before every participant is connected; transactions on the others time out"
            );
        }
        println!("{line}");
        self.announcement = None;
    }

    fn on_frame(&mut self, now: Time, conn: ConnId, frame: Frame, fx: &mut CoordEffects) {
        match frame {
            Frame::Submits(submits) if !self.peer_of_conn.contains_key(&conn) => {
                let Some(identity) = self.identity_of_conn.get(&conn).cloned() else {
                    return super::refuse(
                        &mut self.transport,
                        conn,
                        "submits from a connection that is no client".into(),
                    );
                };
                for submit in submits {
                    // A session's replies go only to connections of its own identity; the
                    // engine refuses anyone else's requests on it.
                    // Bound to this connection already means checked already (session ids
                    // are never reused): the hot path skips the second lookup.
                    let owned = submit.registration_nonce().is_none()
                        && (self.client_conn.get(&submit.client) == Some(&conn)
                            || self.engine.session_owner_is(submit.client, &identity));
                    if owned && !self.bind_client(conn, submit.client) {
                        let message = format!("a connection may speak for at most {MAX_CLIENTS_PER_CONN} client ids");
                        return super::refuse(&mut self.transport, conn, message);
                    }
                    let traced = self.trace.as_mut().and_then(|trace| trace.before_submit(&submit, fx));
                    self.metrics.submitted(now, submit.client, submit.seq);
                    let origin = ClientOrigin { conn, identity: &identity };
                    self.engine.on_submit(now, origin, submit, fx);
                    if let (Some(trace), Some(pending)) = (&mut self.trace, traced) {
                        trace.after_submit(pending, fx);
                    }
                }
            }
            Frame::Interactive(requests) if !self.peer_of_conn.contains_key(&conn) => {
                let Some(identity) = self.identity_of_conn.get(&conn).cloned() else {
                    return super::refuse(
                        &mut self.transport,
                        conn,
                        "interactive requests from a connection that is no client".into(),
                    );
                };
                for request in requests {
                    let (client, _) = request.request();
                    // As for submits: replies go only to connections of the session's own
                    // identity; the engine refuses anyone else's requests on it.
                    let owned =
                        self.client_conn.get(&client) == Some(&conn) || self.engine.session_owner_is(client, &identity);
                    if owned && !self.bind_client(conn, client) {
                        let message = format!("a connection may speak for at most {MAX_CLIENTS_PER_CONN} client ids");
                        return super::refuse(&mut self.transport, conn, message);
                    }
                    self.metrics.interactive_request(&request);
                    let origin = ClientOrigin { conn, identity: &identity };
                    self.engine.on_interactive(now, origin, request, fx);
                }
            }
            Frame::Sagas(requests) if !self.peer_of_conn.contains_key(&conn) => {
                let Some(identity) = self.identity_of_conn.get(&conn).cloned() else {
                    return super::refuse(
                        &mut self.transport,
                        conn,
                        "sagas from a connection that is no client".into(),
                    );
                };
                for request in requests {
                    // As for submits: replies go only to connections of the session's own
                    // identity; the engine refuses anyone else's requests on it.
                    let owned = self.client_conn.get(&request.client) == Some(&conn)
                        || self.engine.session_owner_is(request.client, &identity);
                    if owned && !self.bind_client(conn, request.client) {
                        let message = format!("a connection may speak for at most {MAX_CLIENTS_PER_CONN} client ids");
                        return super::refuse(&mut self.transport, conn, message);
                    }
                    let origin = ClientOrigin { conn, identity: &identity };
                    self.engine.on_saga(now, origin, request, fx);
                }
            }
            Frame::TraceContext(entries) if !self.peer_of_conn.contains_key(&conn) => {
                if let Some(trace) = &mut self.trace {
                    trace.on_trace_context(entries);
                }
            }
            Frame::AdminRequest(AdminOp::Topology) if !self.peer_of_conn.contains_key(&conn) => {
                let frame = Frame::Topology(self.topology.clone());
                self.transport.send(conn, frame.to_bytes());
            }
            Frame::AdminRequest(AdminOp::Status) if !self.peer_of_conn.contains_key(&conn) => {
                // A single coordinator: no replica to list (a group's members answer this
                // themselves, in `replicated`).
                let end = DumpEnd { keys: 0, prepared: 0, in_doubt: 0, fsync: false };
                self.transport.send(conn, Frame::DumpEnd(end).to_bytes());
            }
            Frame::ToCoordinator(messages) => {
                let Some(&from) = self.peer_of_conn.get(&conn) else {
                    tracing::warn!(
                        conn,
                        "participant messages from a connection that is not a participant; closing it"
                    );
                    return self.transport.close(conn);
                };
                for message in messages {
                    if let Some(trace) = &mut self.trace {
                        trace.on_message(from, &message);
                    }
                    let wait_for_outputs = self.metrics.received(now, from, &message, fx);
                    self.engine.on_message(now, from, message, fx);
                    self.metrics.stepped(now, wait_for_outputs, fx);
                }
            }
            other => super::refuse(
                &mut self.transport,
                conn,
                format!("a coordinator does not serve {:?} frames", other.kind()),
            ),
        }
    }

    /// Replies to `client` go to its latest connection.
    fn bind_client(&mut self, conn: ConnId, client: ClientId) -> bool {
        if self.client_conn.get(&client) == Some(&conn) {
            return true;
        }
        let clients = self.clients_of_conn.entry(conn).or_default();
        if clients.len() >= MAX_CLIENTS_PER_CONN {
            return false;
        }
        clients.push(client);
        self.client_conn.insert(client, conn);
        true
    }

    fn forget_conn(&mut self, conn: ConnId) {
        for client in self.clients_of_conn.remove(&conn).unwrap_or_default() {
            if self.client_conn.get(&client) == Some(&conn) {
                self.client_conn.remove(&client);
            }
        }
        self.to_clients.remove(&conn);
        self.identity_of_conn.remove(&conn);
    }

    /// Queues `reply` on client connection `conn`.
    fn reply_on(&mut self, conn: ConnId, reply: &Reply) {
        let limits = self.limits;
        let writer = self.to_clients.entry(conn).or_insert_with(|| BatchWriter::new(&limits));
        if let Err(err) = writer.push(reply) {
            tracing::error!("dropping a reply on connection {conn}: {err:?}");
        }
    }
}

impl Role for CoordinatorRole {
    type Record = CoordRecord;
    type Output = CoordOutput;

    fn reactor(&mut self) -> &mut Reactor {
        &mut self.transport
    }

    fn on_inbound(&mut self, now: Time, inbound: Inbound, fx: &mut CoordEffects) {
        match inbound {
            Inbound::Accepted { conn, identity, .. } if identity.role == NetRole::Client => {
                self.identity_of_conn.insert(conn, connection_identity(&identity));
            }
            Inbound::Accepted { .. } => {}
            Inbound::PeerUp { peer, conn, .. } => {
                let participant = ParticipantId(peer.0 as u16);
                tracing::info!(%participant, conn, "participant connected");
                self.peer_conn.insert(participant, conn);
                self.peer_of_conn.insert(conn, participant);
                self.engine.participant_reachable(participant);
                self.metrics.participant_up(participant);
                self.send_held(participant, conn);
                self.announce_when_ready();
            }
            Inbound::PeerDown { peer } => {
                let participant = ParticipantId(peer.0 as u16);
                tracing::warn!(%participant, "participant connection lost; reconnecting");
                if let Some(conn) = self.peer_conn.remove(&participant) {
                    self.peer_of_conn.remove(&conn);
                }
                self.metrics.participant_down(participant);
                // Its transactions abort now rather than at their prepare timeout.
                self.engine.participant_unreachable(participant, fx);
            }
            Inbound::Frame { conn, frame } => {
                self.metrics.frame_in(self.peer_of_conn.get(&conn).copied());
                self.on_frame(now, conn, frame, fx)
            }
            Inbound::Closed { conn } => self.forget_conn(conn),
        }
    }

    fn on_tick(&mut self, now: Time, fx: &mut CoordEffects) {
        self.engine.on_tick(now, fx);
    }

    fn next_deadline(&self) -> Option<Time> {
        self.engine.next_deadline()
    }

    fn after_step(&mut self, durable: Lsn) {
        if let Some(trace) = &mut self.trace {
            trace.after_step(durable);
        }
        self.announce_when_ready();
        let engine = &self.engine;
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.after_step(durable, engine.last_lsn(), || engine.snapshot());
        }
        self.metrics.after_step(engine, durable, &self.transport);
    }

    fn log_metrics(&mut self) -> Option<&mut crate::metrics::LogMetrics> {
        self.metrics.log()
    }

    fn observe(&mut self, fx: &CoordEffects) {
        if let Some(trace) = &mut self.trace {
            trace.observe(fx);
        }
    }

    fn appended(&mut self, record: &CoordRecord) {
        if matches!(record, CoordRecord::Commit { .. }) {
            failpoint::hit(Failpoint::CoordinatorCommitAppended);
        }
    }

    fn route(&mut self, released: &mut Vec<CoordOutput>) {
        let epoch = self.engine.epoch();
        let limits = self.limits;
        let mut die_once_sent = None;
        // Trace contexts go to each participant before the data frame they describe, in the
        // same hand-over to the transport: sent on their own, they would wake its thread
        // twice and could leave in a write (and reach the participant in a read) of their own.
        let mut frames: Vec<(ConnId, Bytes)> = Vec::new();
        for (participant, frame) in self.trace.as_mut().map(|trace| trace.released(released)).unwrap_or_default() {
            match self.peer_conn.get(&participant) {
                Some(&conn) => frames.push((conn, frame)),
                None => hold_until_connected(&mut self.held, participant, frame),
            }
        }
        for output in released.drain(..) {
            match output {
                CoordOutput::ToParticipant(to, message) => {
                    let is_commit = matches!(message, ToParticipant::Commit { .. });
                    if is_commit {
                        failpoint::hit(Failpoint::CoordinatorCommitDurable);
                    } else if matches!(message, ToParticipant::Prepare { .. })
                        && failpoint::reached(Failpoint::CoordinatorPrepareSent)
                    {
                        die_once_sent = Some(Failpoint::CoordinatorPrepareSent);
                    }
                    self.metrics.sent(to, &message);
                    let writer = self.to_participants.entry(to).or_insert_with(|| BatchWriter::new(&limits));
                    writer.set_epoch(epoch);
                    if let Err(err) = writer.push(&message) {
                        // Limits keep this from happening; losing the message is safe (it times out).
                        tracing::error!("dropping a message to {to}: {err:?}");
                    }
                    if is_commit && failpoint::reached(Failpoint::CoordinatorCommitSentPartial) {
                        self.send_only_to_then_die(to);
                    }
                }
                CoordOutput::ToClient(reply) => {
                    // A client that went away retries on a new connection and gets its outcome then.
                    let Some((client, _)) = reply.request() else { continue };
                    let Some(&conn) = self.client_conn.get(&client) else { continue };
                    self.metrics.replied(&reply);
                    self.reply_on(conn, &reply);
                }
                CoordOutput::ToConnection { conn, reply } => {
                    if self.identity_of_conn.contains_key(&conn) {
                        self.metrics.replied(&reply);
                        self.reply_on(conn, &reply);
                    }
                }
                CoordOutput::Warning(warning) => tracing::warn!("{warning}"),
            }
        }
        for (participant, writer) in &mut self.to_participants {
            if writer.is_empty() {
                continue;
            }
            let bytes = writer.take();
            match self.peer_conn.get(participant) {
                Some(&conn) => {
                    self.metrics.frame_out(Some(*participant), bytes.len());
                    frames.push((conn, bytes));
                }
                None => hold_until_connected(&mut self.held, *participant, bytes),
            }
        }
        for (conn, writer) in &mut self.to_clients {
            if !writer.is_empty() {
                let bytes = writer.take();
                self.metrics.frame_out(None, bytes.len());
                frames.push((*conn, bytes));
            }
        }
        if !frames.is_empty() {
            self.transport.send_many(frames);
        }
        if let Some(point) = die_once_sent {
            self.flush_then_die(point);
        }
    }
}

/// A frame for a participant with no connection: held if it has not connected yet since the
/// role started (a full holding drops it, and says so once). One that was connected and is
/// down now misses it: prepares time out, commits are re-driven.
fn hold_until_connected(held: &mut HeldFrames, participant: ParticipantId, frame: Bytes) {
    held.hold(participant, frame, Instant::now());
}

impl CoordinatorRole {
    /// `participant` connected on `conn` for the first time: what was held for it leaves,
    /// ahead of anything sent from now on.
    fn send_held(&mut self, participant: ParticipantId, conn: ConnId) {
        let (frames, dropped) = self.held.release(participant, Instant::now());
        if !frames.is_empty() {
            tracing::info!(%participant, frames = frames.len(), dropped, "sending what was held for its connection");
            for frame in &frames {
                self.metrics.frame_out(Some(participant), frame.len());
            }
            self.transport.send_many(frames.into_iter().map(|frame| (conn, frame)).collect());
        }
    }

    /// Failpoint `coordinator-commit-sent-partial`: what is batched for `to` (including the
    /// Commit just pushed) leaves; every other participant's batch and every client reply
    /// of this step never does.
    fn send_only_to_then_die(&mut self, to: ParticipantId) -> ! {
        let bytes = self.to_participants.get_mut(&to).map(BatchWriter::take).unwrap_or_default();
        match self.peer_conn.get(&to) {
            Some(&conn) => self.transport.send(conn, bytes),
            None => tracing::error!(participant = %to, "failpoint: the participant is not connected; nothing sent"),
        }
        self.flush_then_die(Failpoint::CoordinatorCommitSentPartial)
    }

    /// Waits until what was handed to the transport is in the kernel (so it reaches the
    /// peer although this process dies), then fires `point`.
    fn flush_then_die(&mut self, point: Failpoint) -> ! {
        if !self.transport.flush(FAILPOINT_FLUSH_WAIT) {
            tracing::error!("failpoint {}: the network did not flush in time", point.name());
        }
        failpoint::fire(point)
    }
}

/// The engine's configuration from the node's options.
pub(super) fn engine_config(options: &CoordinatorOptions) -> CoordinatorConfig {
    let ids: Vec<ParticipantId> = options.participants.iter().map(|(id, _, _)| *id).collect();
    let mut config = CoordinatorConfig::new(ids);
    config.prepare_timeout = options.prepare_timeout;
    config.max_preparing = options.max_in_flight;
    config.max_outcome_bytes = (NetLimits::default().max_frame_bytes as usize).saturating_sub(REPLY_OVERHEAD_BYTES);
    config.hash_seed = rand::random();
    config
}

/// A coordinator's network: where it listens, the epoch its `Hello` names, whether it accepts
/// its group's other coordinators (a replicated group) and dials the participants (a single
/// coordinator or a group's leader; a follower does not).
pub(super) struct Network {
    pub listen: SocketAddr,
    pub epoch: Epoch,
    pub coordinators: bool,
    pub participants: bool,
}

impl Network {
    /// Starts the reactor; returns it, its bound address and the participants' topology.
    pub(super) fn start(&self, options: &CoordinatorOptions) -> anyhow::Result<(Reactor, SocketAddr, Topology)> {
        let me = Hello {
            role: NetRole::Coordinator,
            cluster: options.cluster.clone(),
            node: options.id.clone(),
            epoch: self.epoch,
        };
        let security = options.security.load(&format!("coordinator {}", options.id))?;
        let mut transport_config = TransportConfig::new(me, security);
        transport_config.listen = Some(self.listen);
        transport_config.accept_roles = vec![NetRole::Client, NetRole::Admin];
        if self.coordinators {
            transport_config.accept_roles.push(NetRole::Coordinator);
        }
        transport_config.directory = options.participants.iter().map(|(id, name, _)| (*id, name.clone())).collect();
        transport_config.limits = NetLimits::default();
        let (mut transport, addr) = Reactor::new(transport_config).context("starting the network")?;
        let mut topology = Vec::new();
        for (id, name, addr) in &options.participants {
            let resolved = resolve(addr)?;
            if self.participants {
                transport.add_peer(PeerId(id.0 as u64), resolved, name.clone());
            }
            topology.push((*id, name.clone(), resolved.to_string()));
        }
        Ok((transport, addr, topology))
    }
}

/// Every participant's id, name and resolved address.
pub(super) type Topology = Vec<(ParticipantId, String, String)>;

/// What a coordinator role holds besides its engine and network.
pub(super) struct RoleParts {
    pub topology: Topology,
    pub announcement: Option<(String, Instant)>,
    pub checkpoints: Option<SnapshotPolicy<CoordinatorSnapshot>>,
    pub trace: Option<CoordinatorTrace>,
    pub metrics: CoordinatorMetrics,
}

impl CoordinatorRole {
    pub(super) fn new(engine: Coordinator, transport: Reactor, parts: RoleParts) -> CoordinatorRole {
        let hold_until = Instant::now() + engine.config().prepare_timeout;
        let held = HeldFrames::awaiting(parts.topology.iter().map(|(id, _, _)| *id), hold_until);
        CoordinatorRole {
            engine,
            transport,
            limits: NetLimits::default(),
            peer_conn: HashMap::new(),
            peer_of_conn: HashMap::new(),
            client_conn: HashMap::new(),
            clients_of_conn: HashMap::new(),
            identity_of_conn: HashMap::new(),
            to_participants: HashMap::new(),
            to_clients: HashMap::new(),
            held,
            topology: parts.topology,
            announcement: parts.announcement,
            checkpoints: parts.checkpoints,
            trace: parts.trace,
            metrics: parts.metrics,
        }
    }

    /// The metrics hooks (a group's leader publishes its Raft state through them).
    pub(super) fn metrics(&mut self) -> &mut CoordinatorMetrics {
        &mut self.metrics
    }

    /// Takes back what outlives one leadership in a replicated group: the metrics (their
    /// listener lives as long as the process) and the span exporter. The role keeps
    /// neither.
    pub(super) fn take_process_parts(&mut self) -> (CoordinatorMetrics, Option<CoordinatorTrace>) {
        (std::mem::take(&mut self.metrics), self.trace.take())
    }
}

pub(super) fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

/// Runs a coordinator until SIGINT/SIGTERM. Prints `listening on ADDR` once serving.
pub fn serve(options: CoordinatorOptions) -> anyhow::Result<()> {
    let stop = super::stop_on_signal()?;
    let started = Instant::now();
    let (_lock, wal, recovery) = super::open_storage(&options.data_dir, &options.storage)?;
    let wal = Arc::new(wal);
    let checkpoint: Option<CoordinatorSnapshot> = snapshot::load(&options.data_dir)?;
    let covered = checkpoint.as_ref().map_or(Lsn::NONE, |c| c.lsn);
    let first_lsn = recovery.records.first().map(|record| Lsn(record.lsn.0));
    snapshot::check_log_continues(covered, first_lsn)?;
    let log = super::decode_log::<CoordRecord>(recovery, covered)?;
    let recovered_records = log.len() as u64;
    let config = engine_config(&options);
    let clock = Clock::new();
    let mut fx = CoordEffects::default();
    let engine = Coordinator::recover_from(config, checkpoint, log, clock.now(), &mut fx);
    tracing::info!(epoch = engine.epoch().0, unfinished = engine.unfinished(), "coordinator recovered");

    let network = Network { listen: options.listen, epoch: engine.epoch(), coordinators: false, participants: true };
    let (transport, addr, topology) = network.start(&options)?;
    let announcement = format!("twophase coordinator {} listening on {addr}", options.id);
    let trace = Exporter::start(&options.trace, "twophase-coordinator", &options.id)?.map(CoordinatorTrace::new);
    super::pin_current_thread(options.pin_core);

    let checkpoints = SnapshotPolicy::new(
        options.checkpoint_every_records,
        covered,
        Snapshotter::spawn(options.data_dir.clone(), wal.clone()),
    );
    let info =
        NodeInfo { node: options.id.clone(), role: "coordinator", recovery: started.elapsed(), recovered_records };
    let metrics = CoordinatorMetrics::serve(
        options.metrics_listen,
        info,
        &options.participants,
        checkpoints.sources(&wal),
        clock,
    )?;
    let parts = RoleParts {
        topology,
        announcement: Some((announcement, Instant::now() + READY_WAIT)),
        checkpoints: Some(checkpoints),
        trace,
        metrics,
    };
    let mut role = CoordinatorRole::new(engine, transport, parts);
    role.announce_when_ready();
    let result = super::run(&mut role, fx, &wal, clock, &stop);
    drop(role.transport);
    if let Some(checkpoints) = role.checkpoints.take() {
        checkpoints.shutdown();
    }
    let wal = Arc::try_unwrap(wal).unwrap_or_else(|_| unreachable!("the checkpoint thread is gone"));
    let closed = wal.close();
    result?;
    closed.context("closing the log")?;
    tracing::info!("coordinator stopped");
    Ok(())
}
