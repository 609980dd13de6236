//! The 3PC coordinator node: clients submit the same `Submit` frames as to the 2PC
//! coordinator and hear the same `Replies`; each transaction becomes one
//! `ThreePcCoordinator::begin`, each participant's ops its payload. Messages to the
//! participants travel batched in `ThreePc` frames over the connections this node dials.
//!
//! What the 2PC coordinator has and this one does not (yet): durable client sessions and
//! their window of outcomes (a session lives as long as this process; a retry of a
//! finished request runs again, one still in flight is not run twice), reads (a `Get` is
//! refused: 3PC outcomes carry none), checkpoints (the log replays whole), metrics and
//! tracing. A No vote carries no reason in 3PC: the client hears `Conflict` at the
//! participant that voted No (the key unknown, empty), `Timeout` when votes were missing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use twophase_engine::threepc::{
    BeginError, CoordEffects3, CoordOutput3, CoordRecord3, Message, Peer, ThreePcCoordinator,
};
use twophase_engine::{
    AbortReason, ClientId, Epoch, Limits, LocalOp, Lsn, OpKind, Outcome, ParticipantId, RegisterRefusal, RejectReason,
    Reply, Submit, Time, TxId,
};
use twophase_net::{
    AdminOp, BatchWriter, ConnId, Frame, Hello, Inbound, NetLimits, PeerId, Reactor, Role as NetRole, ThreePcItem,
    TransportConfig,
};

use super::super::coordinator::{CoordinatorOptions, resolve};
use super::super::{Clock, Role};
use super::store::encode_ops;
use super::{TXS_MAX, Ticker, timeouts};
use crate::failpoint::{self, Failpoint};
use crate::metrics::{NodeInfo, Sources, ThreePcMetrics};

/// Client sessions at most (the 2PC coordinator's bound).
const SESSIONS_MAX: usize = 4096;
/// A connection may speak for this many sessions at most.
const SESSIONS_PER_CONN_MAX: usize = 4096;
/// Longest the `listening on` line waits for every participant to be connected.
const READY_WAIT: Duration = Duration::from_secs(5);

/// A client request in flight as a 3PC transaction.
struct Request {
    client: ClientId,
    seq: u64,
}

pub struct ThreePcCoordinatorRole {
    engine: ThreePcCoordinator,
    epoch: Epoch,
    transport: Reactor,
    limits: NetLimits,
    ticker: Ticker,
    participants: Vec<ParticipantId>,
    /// Every participant's id, name and address, for admin `Topology` requests.
    topology: Vec<(ParticipantId, String, String)>,
    admins: HashSet<ConnId>,
    peer_conn: HashMap<ParticipantId, ConnId>,
    peer_of_conn: HashMap<ConnId, ParticipantId>,
    /// Each open client connection's identity (its certificate's name, or its Hello's).
    identity_of_conn: HashMap<ConnId, String>,
    /// Each session's identity and the connection its replies go to.
    sessions: HashMap<ClientId, (String, Option<ConnId>)>,
    sessions_of_conn: HashMap<ConnId, Vec<ClientId>>,
    next_session: u64,
    requests: HashMap<TxId, Request>,
    in_flight: HashSet<(ClientId, u64)>,
    /// The first participant that voted No, per transaction still voting.
    no_votes: HashMap<TxId, ParticipantId>,
    to_participants: HashMap<ParticipantId, BatchWriter<ThreePcItem>>,
    to_clients: HashMap<ConnId, BatchWriter<Reply>>,
    announcement: Option<(String, Instant)>,
    metrics: ThreePcMetrics,
}

impl ThreePcCoordinatorRole {
    fn announce_when_ready(&mut self) {
        let Some((line, deadline)) = &self.announcement else { return };
        let all_connected = self.peer_conn.len() == self.participants.len();
        if !all_connected && Instant::now() < *deadline {
            return;
        }
        if !all_connected {
            tracing::warn!(connected = self.peer_conn.len(), "serving before every participant is connected");
        }
        println!("{line}");
        self.announcement = None;
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, fx: &mut CoordEffects3) {
        match frame {
            Frame::ThreePc(items) => {
                let Some(&from) = self.peer_of_conn.get(&conn) else {
                    return super::super::refuse(&mut self.transport, conn, "3pc messages from no participant".into());
                };
                for item in items {
                    if item.from != Peer::Participant(from) || item.to != Peer::Coordinator {
                        tracing::warn!(conn, %from, "dropping a 3pc message sent as {:?} to {:?}", item.from, item.to);
                        continue;
                    }
                    if let Message::Vote { txid, yes: false } = item.message
                        && self.requests.contains_key(&txid)
                    {
                        self.no_votes.entry(txid).or_insert(from);
                    }
                    self.engine.on_message(from, item.message, fx);
                }
            }
            Frame::AdminRequest(AdminOp::Topology) if self.admins.contains(&conn) => {
                self.transport.send(conn, Frame::Topology(self.topology.clone()).to_bytes());
            }
            Frame::Submits(submits) if self.identity_of_conn.contains_key(&conn) => {
                for submit in submits {
                    self.on_submit(conn, submit, fx);
                }
            }
            other => super::super::refuse(
                &mut self.transport,
                conn,
                format!("a 3pc coordinator does not serve {:?} frames", other.kind()),
            ),
        }
    }

    fn on_submit(&mut self, conn: ConnId, submit: Submit, fx: &mut CoordEffects3) {
        let identity = self.identity_of_conn[&conn].clone();
        if let Some(nonce) = submit.registration_nonce() {
            return self.register(conn, identity, nonce);
        }
        let (client, seq) = (submit.client, submit.seq);
        match self.sessions.get(&client) {
            None => return self.reply_on(conn, &Reply::Rejected { client, seq, reason: RejectReason::SessionExpired }),
            Some((owner, _)) if *owner != identity => {
                return self.reply_on(conn, &Reply::Rejected { client, seq, reason: RejectReason::NotSessionOwner });
            }
            Some(_) => self.bind(client, conn),
        }
        if !self.in_flight.insert((client, seq)) {
            return; // A resend of a request in flight: it is answered once.
        }
        self.metrics.submitted(client, seq);
        match self.work(&submit.ops) {
            Err(reason) => self.finish(client, seq, Outcome::Aborted { reason }),
            Ok(work) => match self.engine.begin(work, fx) {
                Ok(txid) => {
                    self.requests.insert(txid, Request { client, seq });
                }
                Err(BeginError::Busy) => {
                    self.in_flight.remove(&(client, seq));
                    self.reply_to(client, &Reply::Rejected { client, seq, reason: RejectReason::Busy });
                }
                Err(refused) => {
                    let detail = format!("{refused:?}");
                    self.finish(client, seq, Outcome::Aborted { reason: AbortReason::Invalid { detail } });
                }
            },
        }
    }

    /// Opens a session for `identity` (not logged: it lives as long as this process).
    fn register(&mut self, conn: ConnId, identity: String, nonce: u64) {
        if self.sessions.len() >= SESSIONS_MAX {
            return self.reply_on(conn, &Reply::RegisterRefused { nonce, reason: RegisterRefusal::TableFull });
        }
        self.next_session += 1;
        let client = ClientId(TxId::new(self.epoch, self.next_session).0);
        self.sessions.insert(client, (identity, None));
        self.bind(client, conn);
        self.reply_on(conn, &Reply::Registered { nonce, client });
    }

    /// Replies to `client` go to `conn` (its latest), within the per-connection bound.
    fn bind(&mut self, client: ClientId, conn: ConnId) {
        let Some((_, bound)) = self.sessions.get_mut(&client) else { return };
        if *bound == Some(conn) {
            return;
        }
        let clients = self.sessions_of_conn.entry(conn).or_default();
        if clients.len() >= SESSIONS_PER_CONN_MAX {
            return;
        }
        clients.push(client);
        *bound = Some(conn);
    }

    /// Each participant's ops as a CanCommit payload, or why the transaction cannot run.
    fn work(&self, ops: &[twophase_engine::Op]) -> Result<Vec<(ParticipantId, Vec<u8>)>, AbortReason> {
        Limits::default().check_ops(ops).map_err(|detail| AbortReason::Invalid { detail })?;
        if ops.iter().any(|op| matches!(op.kind, OpKind::Get)) {
            let detail = "3pc transactions return no reads: Get is not supported under --protocol 3pc".into();
            return Err(AbortReason::Invalid { detail });
        }
        let mut by_participant: Vec<(ParticipantId, Vec<LocalOp>)> = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            if !self.participants.contains(&op.participant) {
                return Err(AbortReason::UnknownParticipant { participant: op.participant });
            }
            let local = LocalOp { index: index as u16, key: op.key.clone(), kind: op.kind.clone() };
            match by_participant.iter_mut().find(|(participant, _)| *participant == op.participant) {
                Some((_, local_ops)) => local_ops.push(local),
                None => by_participant.push((op.participant, vec![local])),
            }
        }
        Ok(by_participant.into_iter().map(|(participant, local_ops)| (participant, encode_ops(&local_ops))).collect())
    }

    fn finish(&mut self, client: ClientId, seq: u64, outcome: Outcome) {
        self.in_flight.remove(&(client, seq));
        self.metrics.replied(client, seq, &outcome);
        self.reply_to(client, &Reply::Outcome { client, seq, outcome });
    }

    fn reply_to(&mut self, client: ClientId, reply: &Reply) {
        // A client that went away hears nothing (its session ends with this process).
        if let Some((_, Some(conn))) = self.sessions.get(&client) {
            let conn = *conn;
            self.reply_on(conn, reply);
        }
    }

    fn reply_on(&mut self, conn: ConnId, reply: &Reply) {
        let limits = self.limits;
        let writer = self.to_clients.entry(conn).or_insert_with(|| BatchWriter::new(&limits));
        if let Err(err) = writer.push(reply) {
            tracing::error!(conn, "dropping a reply: {err}");
        }
    }

    /// Why `txid` aborted, as well as 3PC can tell.
    fn abort_reason(&mut self, txid: TxId) -> AbortReason {
        match self.no_votes.remove(&txid) {
            Some(participant) => AbortReason::Conflict { participant, key: Bytes::new() },
            None => AbortReason::Timeout { participant: self.participants[0] },
        }
    }

    fn on_outcome(&mut self, txid: TxId, committed: bool) {
        let reason = if committed { None } else { Some(self.abort_reason(txid)) };
        self.no_votes.remove(&txid);
        // A transaction recovered from the log has no client here (its session died with
        // the process that began it).
        let Some(Request { client, seq }) = self.requests.remove(&txid) else { return };
        let outcome = match reason {
            None => Outcome::Committed { reads: Vec::new() },
            Some(reason) => Outcome::Aborted { reason },
        };
        self.finish(client, seq, outcome);
    }

    fn forget_conn(&mut self, conn: ConnId) {
        for client in self.sessions_of_conn.remove(&conn).unwrap_or_default() {
            if let Some((_, bound)) = self.sessions.get_mut(&client)
                && *bound == Some(conn)
            {
                *bound = None;
            }
        }
        self.identity_of_conn.remove(&conn);
        self.admins.remove(&conn);
        self.to_clients.remove(&conn);
    }

    fn flush(&mut self) {
        let mut frames: Vec<(ConnId, Bytes)> = Vec::new();
        for (participant, writer) in &mut self.to_participants {
            if writer.is_empty() {
                continue;
            }
            let bytes = writer.take();
            // A participant that is down misses these; the engine resends.
            if let Some(&conn) = self.peer_conn.get(participant) {
                frames.push((conn, bytes));
            }
        }
        for (conn, writer) in &mut self.to_clients {
            if !writer.is_empty() {
                frames.push((*conn, writer.take()));
            }
        }
        if !frames.is_empty() {
            self.transport.send_many(frames);
        }
    }
}

impl Role for ThreePcCoordinatorRole {
    type Record = CoordRecord3;
    type Output = CoordOutput3;

    fn reactor(&mut self) -> &mut Reactor {
        &mut self.transport
    }

    fn on_inbound(&mut self, _now: Time, inbound: Inbound, fx: &mut CoordEffects3) {
        match inbound {
            Inbound::Accepted { conn, identity, .. } if identity.role == NetRole::Client => {
                self.identity_of_conn.insert(conn, identity.name.clone());
            }
            Inbound::Accepted { conn, identity, .. } if identity.role == NetRole::Admin => {
                self.admins.insert(conn);
            }
            Inbound::Accepted { .. } => {}
            Inbound::PeerUp { peer, conn, .. } => {
                let participant = ParticipantId(peer.0 as u16);
                tracing::info!(%participant, conn, "participant connected");
                self.peer_conn.insert(participant, conn);
                self.peer_of_conn.insert(conn, participant);
                self.announce_when_ready();
            }
            Inbound::PeerDown { peer } => {
                let participant = ParticipantId(peer.0 as u16);
                tracing::warn!(%participant, "participant connection lost; reconnecting");
                if let Some(conn) = self.peer_conn.remove(&participant) {
                    self.peer_of_conn.remove(&conn);
                }
            }
            Inbound::Frame { conn, frame } => self.on_frame(conn, frame, fx),
            Inbound::Closed { conn } => self.forget_conn(conn),
        }
    }

    fn on_tick(&mut self, now: Time, fx: &mut CoordEffects3) {
        for _ in 0..self.ticker.due(now) {
            self.engine.tick(fx);
        }
    }

    fn next_deadline(&self) -> Option<Time> {
        Some(self.ticker.next_deadline())
    }

    fn appended(&mut self, record: &CoordRecord3) {
        match record {
            CoordRecord3::PreCommit { .. } => failpoint::hit(Failpoint::ThreePcVotesIn),
            CoordRecord3::Decided { commit: true, .. } => failpoint::hit(Failpoint::ThreePcPreCommitAcked),
            _ => {}
        }
    }

    fn after_step(&mut self, durable: Lsn) {
        self.announce_when_ready();
        self.metrics.after_step(self.engine.in_flight(), durable, &self.transport);
        // Replies that need no log (registrations, refusals) leave with this step.
        self.flush();
    }

    fn log_metrics(&mut self) -> Option<&mut crate::metrics::LogMetrics> {
        self.metrics.log()
    }

    fn route(&mut self, released: &mut Vec<CoordOutput3>) {
        let limits = self.limits;
        for output in released.drain(..) {
            match output {
                CoordOutput3::Send(envelope) => {
                    let Peer::Participant(to) = envelope.to else {
                        tracing::error!("the 3pc coordinator addressed itself: {envelope:?}");
                        continue;
                    };
                    let item = ThreePcItem { from: Peer::Coordinator, to: envelope.to, message: envelope.message };
                    let writer = self.to_participants.entry(to).or_insert_with(|| BatchWriter::new(&limits));
                    if let Err(err) = writer.push(&item) {
                        tracing::error!(participant = %to, "dropping a 3pc message: {err}");
                    }
                }
                CoordOutput3::Outcome { txid, committed } => self.on_outcome(txid, committed),
                CoordOutput3::Warning(warning) => tracing::warn!("{warning}"),
            }
        }
        self.flush();
    }
}

/// Runs a 3PC coordinator until SIGINT/SIGTERM. Prints `listening on ADDR` once serving.
pub fn serve(options: CoordinatorOptions) -> anyhow::Result<()> {
    let stop = super::super::stop_on_signal()?;
    let started = Instant::now();
    let (_lock, wal, recovery) = super::super::open_storage(&options.data_dir, &options.storage)?;
    let log = super::super::decode_log::<CoordRecord3>(recovery, Lsn::NONE)?;
    let recovered_records = log.len() as u64;
    let epoch = Epoch(super::next_epoch(&options.data_dir)?);
    let clock = Clock::new();
    let mut fx = CoordEffects3::default();
    let engine = ThreePcCoordinator::recover(epoch, timeouts(), TXS_MAX, log, &mut fx);
    tracing::info!(epoch = epoch.0, unfinished = engine.in_flight(), "3pc coordinator recovered");

    let me = Hello { role: NetRole::Coordinator, cluster: options.cluster.clone(), node: options.id.clone(), epoch };
    let security = options.security.load(&format!("coordinator {}", options.id))?;
    let mut config = TransportConfig::new(me, security);
    config.listen = Some(options.listen);
    config.accept_roles = vec![NetRole::Client, NetRole::Admin];
    config.directory = options.participants.iter().map(|(id, name, _)| (*id, name.clone())).collect();
    let (mut transport, addr) = Reactor::new(config).context("starting the network")?;
    let mut topology = Vec::new();
    for (id, name, address) in &options.participants {
        let resolved: SocketAddr = resolve(address)?;
        transport.add_peer(PeerId(u64::from(id.0)), resolved, name.clone());
        topology.push((*id, name.clone(), resolved.to_string()));
    }
    let info =
        NodeInfo { node: options.id.clone(), role: "coordinator", recovery: started.elapsed(), recovered_records };
    let metrics =
        ThreePcMetrics::serve(options.metrics_listen, info, Some(epoch.0), Sources::without_snapshots(&wal), clock)?;
    super::super::pin_current_thread(options.pin_core);
    let announcement = format!("twophase coordinator {} (3pc) listening on {addr}", options.id);
    let mut role = ThreePcCoordinatorRole {
        engine,
        epoch,
        transport,
        limits: NetLimits::default(),
        ticker: Ticker::new(clock.now()),
        participants: options.participants.iter().map(|(id, _, _)| *id).collect(),
        topology,
        admins: HashSet::new(),
        peer_conn: HashMap::new(),
        peer_of_conn: HashMap::new(),
        identity_of_conn: HashMap::new(),
        sessions: HashMap::new(),
        sessions_of_conn: HashMap::new(),
        next_session: 0,
        requests: HashMap::new(),
        in_flight: HashSet::new(),
        no_votes: HashMap::new(),
        to_participants: HashMap::new(),
        to_clients: HashMap::new(),
        announcement: Some((announcement, Instant::now() + READY_WAIT)),
        metrics,
    };
    role.announce_when_ready();
    let result = super::super::run(&mut role, fx, &wal, clock, &stop);
    drop(role.transport);
    let closed = wal.close();
    result?;
    closed.context("closing the log")?;
    tracing::info!("3pc coordinator stopped");
    Ok(())
}
