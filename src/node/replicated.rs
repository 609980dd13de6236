//! A coordinator in a Raft-replicated group (`--peer NAME=ADDR`, one per member, itself
//! included): the coordinator's records go through a [`Replica`] instead of the local wal.
//!
//! Every member runs a Replica over `DATA_DIR/raft` and applies the committed batches to an
//! [`AppliedState`]. Raft messages travel in `Raft` frames on links of their own: each member
//! dials every other one (peer ids `RAFT_PEER_BASE | raft id`, never a participant's) and
//! steps what arrives on accepted links with [`Replica::step_from`], the sender being who
//! the link's certificate says (under `--insecure-plaintext`, its `Hello`).
//!
//! Only the leader coordinates. Once it has applied everything committed before its term
//! (Raft's own entry of the term included), it builds its engine from the applied state
//! ([`AppliedState::leader_engine`]: epoch at least its term, so participants refuse every
//! earlier leader as stale; undecided transactions are resolved as a restart does) and starts
//! a network whose `Hello` names that epoch and which dials the participants. Each loop turn,
//! the engine's records are proposed as one batch; the outputs that wait for them leave only
//! when the batch is committed by a majority and applied here (the durability gate advances
//! on applied batches of the leader's own term, never on the local fsync alone).
//!
//! When Raft's proposal queue is full (`Busy`: the followers are behind), the batches wait
//! in a [`ProposalBacklog`] and are proposed first on the next turns; meanwhile the engine
//! takes no input (the events for it are held, in order, up to [`HELD_EVENTS_MAX`]; beyond,
//! a connection that sends more is closed, and its client resends elsewhere or later), so
//! its outputs stay gated and nothing is lost: back-pressure, not a step-down.
//!
//! A leader that loses its leadership (or whose proposal is refused) drops its engine, the
//! outputs it still held and its network (participants and clients see the connections
//! close), and serves as a follower: a follower does not dial participants and answers
//! every client with a `NotLeader` frame naming the leader, if known, which the client
//! library follows. Every member answers an admin `Status` with its own role, term, commit
//! and applied index.
//!
//! Invariants: an output leaves only after the batch holding its record is committed and
//! applied; a committed batch starts right after the applied records (asserted in
//! `AppliedState::apply`); at most one engine per node, and only on the leader.
//! Every `--raft-snapshot-every-entries` entries ([`GroupOptions`]) the applied state is
//! snapshotted and the log compacted; a member that lags behind the compacted part is sent
//! the snapshot and logs `restored the leader's raft snapshot`.
//!
//! Metrics (`--metrics-listen`) and tracing (`--trace-sample`) live as long as the process:
//! one listener and one span exporter, handed to each leadership's role and taken back when
//! it ends. Every member publishes its Raft state (`twophase_raft_*` gauges); a follower
//! publishes from its loop, as no engine steps there.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use twophase_engine::coordinator::{CoordEffects, CoordOutput};
use twophase_engine::{DurabilityGate, Epoch, Time};
use twophase_net::{
    AdminOp, ConnId, DumpEnd, Frame, Inbound, LeaderHint, NotLeader, PeerId, Reactor, ReplicaRole, ReplicaStatus,
    Role as NetRole,
};
use twophase_replica::{Output, ProposeError, Replica, ReplicaConfig, ReplicaError, RoleChange};
use twophase_wal::{Backend, SyncMode, WalOptions};

use super::Clock;
use super::Role;
use super::applied::{AppliedState, BatchEncoder};
use super::coordinator::{CoordinatorOptions, CoordinatorRole, Network, RoleParts, engine_config};
use crate::metrics::{CoordinatorMetrics, GroupStatus, NodeInfo, Sources};
use crate::trace::Exporter;
use crate::trace::coordinator::CoordinatorTrace;
use twophase_groupsim::backlog::ProposalBacklog;

/// Raft links use peer ids of their own: `RAFT_PEER_BASE | raft id` (participants' ids are
/// below 2^16).
const RAFT_PEER_BASE: u64 = 1 << 32;
/// How often Raft's clock ticks.
const TICK: Duration = Duration::from_millis(10);
/// A follower campaigns after 30–60 ticks (300–600 ms) without a leader: above the pause a
/// new leader's network restart causes (its links come back within ~100 ms). The same
/// number is the leader's check-quorum window: a leader that heard from no majority for 30
/// ticks steps down. A follower's replies (heartbeat responses included) leave only once its
/// wal made the entries before them durable, so on a busy machine (2 cores, every process
/// fsyncing) a follower can be silent for 200 ms and more; with one follower killed the
/// leader counts on the other alone, and a restarted follower replaying its log is the
/// CPU burst that makes that one late. With 20 ticks (200 ms) that deposed the leader in
/// chaos runs, ~0.4–1 s after a follower's restart (same term, no other candidate: the
/// check-quorum step-down). 300 ms keeps failover after a leader's death well under 1 s.
const ELECTION_TICKS: usize = 30;
const HEARTBEAT_TICKS: usize = 2;
/// Raft entries (batches) between Raft snapshots by default (`--raft-snapshot-every-entries`).
pub const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 20_000;
/// Applied records between folds.
const FOLD_EVERY_RECORDS: usize = 200_000;
/// Margin under the frame limit for the frame header.
const FRAME_HEADER_MARGIN_BYTES: usize = 64 << 10;
/// Events held for a backlogged leader's engine at most (see the module doc).
const HELD_EVENTS_MAX: usize = 65_536;
/// The engine thread never sleeps longer than this.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// What only a group member is configured with (flags of `twophase coordinator`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOptions {
    /// Raft entries (batches) between Raft snapshots: the log is compacted up to the
    /// snapshot, and a member that lags behind it catches up from the snapshot. At least 1.
    pub snapshot_every_entries: u64,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions { snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES_DEFAULT }
    }
}

/// One member of the group.
struct Member {
    name: String,
    raft_id: u64,
    addr: SocketAddr,
}

/// The group: raft ids are the members' positions in name order, plus one, so every member
/// derives the same ids from the same `--peer` list.
struct Group {
    members: Vec<Member>,
    me: u64,
}

impl Group {
    fn new(me: &str, peers: &[(String, String)]) -> anyhow::Result<Group> {
        let mut sorted: Vec<&(String, String)> = peers.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut members = Vec::with_capacity(sorted.len());
        for (index, (name, addr)) in sorted.into_iter().enumerate() {
            ensure!(members.iter().all(|m: &Member| &m.name != name), "--peer {name} is given twice");
            // Followers name the leader in NotLeader frames, whose names are bounded.
            ensure!(
                name.len() <= twophase_net::LEADER_NAME_BYTES_MAX,
                "--peer name {name:?} is longer than {} bytes",
                twophase_net::LEADER_NAME_BYTES_MAX
            );
            let addr = super::coordinator::resolve(addr)?;
            members.push(Member { name: name.clone(), raft_id: index as u64 + 1, addr });
        }
        let Some(me) = members.iter().find(|m| m.name == me).map(|m| m.raft_id) else {
            bail!("--peer must list this coordinator ({me}) too");
        };
        Ok(Group { members, me })
    }

    fn by_name(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    fn by_id(&self, raft_id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.raft_id == raft_id)
    }

    fn others(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.raft_id != self.me)
    }
}

/// The leader's engine, its network and its gate.
struct Leading {
    role: CoordinatorRole,
    gate: DurabilityGate<CoordOutput>,
    term: u64,
    fx: CoordEffects,
    /// When this member learnt it won the election, until its first outputs left (the
    /// failover's phases are logged at debug level).
    elected_at: Option<Instant>,
}

struct Node {
    options: CoordinatorOptions,
    group: Group,
    replica: Replica,
    state: AppliedState,
    /// Exactly one of `leading` and `follower_net` is set.
    leading: Option<Leading>,
    follower_net: Option<Reactor>,
    /// Where every network of this node listens (the first one's bound address).
    listen: SocketAddr,
    /// This leader builds its engine once it has applied this index.
    build_at: Option<u64>,
    /// When this member learnt it won the election it builds its engine for.
    elected_at: Option<Instant>,
    known: RoleChange,
    /// Accepted Raft links, by the raft id their identity proves.
    raft_accepted: HashMap<ConnId, u64>,
    /// Dialled Raft links, by raft id.
    raft_dialed: HashMap<u64, ConnId>,
    /// Wakes the current network's `turn` when the Raft wal made records durable.
    wake_slot: Arc<Mutex<Box<dyn Fn() + Send + Sync>>>,
    encoder: BatchEncoder,
    /// Batches Raft's full queue did not take yet (only while leading).
    backlog: ProposalBacklog,
    /// Events for the leader's engine that arrived while batches were held, in order.
    held: VecDeque<Inbound>,
    payload: Vec<u8>,
    released: Vec<CoordOutput>,
    clock: Clock,
    /// The process's metrics while no engine leads here (the leader's role holds them).
    metrics: CoordinatorMetrics,
    /// The process's span exporter while no engine leads here (`None`: tracing is off, or
    /// the leader's role holds it).
    exporter: Option<Exporter>,
}

/// Runs a member of a replicated coordinator group until SIGINT/SIGTERM. Prints `twophase
/// coordinator NAME listening on ADDR` once serving, and `twophase coordinator NAME leads
/// term T with epoch E` each time it becomes the leader.
pub fn serve(options: CoordinatorOptions, group_options: GroupOptions) -> anyhow::Result<()> {
    ensure!(group_options.snapshot_every_entries >= 1, "--raft-snapshot-every-entries must be at least 1");
    let stop = super::stop_on_signal()?;
    let started = Instant::now();
    let group = Group::new(&options.id, &options.group)?;
    let _lock = lock_data_dir(&options.data_dir)?;
    let replica = open_replica(&options, &group, &group_options)?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        entries = replica.last_index().saturating_sub(replica.snapshot_index()),
        "opened the replicated log"
    );
    let clock = Clock::new();
    let mut metrics = start_metrics(&options, &replica, started.elapsed(), clock)?;
    let exporter = Exporter::start(&options.trace, "twophase-coordinator", &options.id)?;
    let wake_slot: Arc<Mutex<Box<dyn Fn() + Send + Sync>>> = Arc::new(Mutex::new(Box::new(|| {})));
    let slot = wake_slot.clone();
    let groups: Option<Arc<AtomicU64>> = metrics.log().map(|log| log.groups_counter());
    replica.wal().on_durable(Box::new(move || {
        if let Some(groups) = &groups {
            groups.fetch_add(1, Ordering::Relaxed);
        }
        (slot.lock().expect("wake slot"))()
    }));
    let batch_bytes_max = ReplicaConfig::new(1, vec![1]).batch_bytes_max;
    let mut node = Node {
        state: AppliedState::new(engine_config(&options), FOLD_EVERY_RECORDS),
        group,
        replica,
        leading: None,
        follower_net: None,
        listen: options.listen,
        build_at: None,
        elected_at: None,
        known: RoleChange { leader_id: None, term: 0, is_leader: false },
        raft_accepted: HashMap::new(),
        raft_dialed: HashMap::new(),
        wake_slot,
        encoder: BatchEncoder::new(batch_bytes_max),
        backlog: ProposalBacklog::default(),
        held: VecDeque::new(),
        payload: Vec::with_capacity(4096),
        released: Vec::new(),
        clock,
        metrics,
        exporter,
        options,
    };
    node.start_following()?;
    println!("twophase coordinator {} listening on {}", node.options.id, node.listen);
    let result = node.run(&stop);
    node.leading = None;
    node.follower_net = None;
    result?;
    tracing::info!("coordinator stopped");
    Ok(())
}

fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let lock_path = data_dir.join("LOCK");
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!("{} is in use by another twophase process", data_dir.display());
    }
    Ok(lock)
}

/// The process's metrics listener (off without `--metrics-listen`); prints its address
/// before the `listening on` line, as a single coordinator does.
fn start_metrics(
    options: &CoordinatorOptions,
    replica: &Replica,
    recovery: Duration,
    clock: Clock,
) -> anyhow::Result<CoordinatorMetrics> {
    // What a restart replays here are the Raft entries after the last snapshot.
    let recovered_records = replica.last_index().saturating_sub(replica.snapshot_index());
    let info = NodeInfo { node: options.id.clone(), role: "coordinator", recovery, recovered_records };
    // No checkpoint thread in a group: Raft snapshots compact its log.
    let sources = Sources { snapshots: Default::default(), wal: replica.wal().stats() };
    CoordinatorMetrics::serve(options.metrics_listen, info, &options.participants, sources, clock)
}

fn open_replica(options: &CoordinatorOptions, group: &Group, group_options: &GroupOptions) -> anyhow::Result<Replica> {
    let storage = &options.storage;
    if storage.unsafe_no_fsync {
        tracing::warn!("--unsafe-no-fsync: records are not synced; a crash of the machine loses acknowledged commits");
    }
    let wal_options = WalOptions {
        segment_size_bytes: storage.segment_size_bytes,
        backend: Backend::Auto,
        sync: if storage.unsafe_no_fsync { SyncMode::None } else { SyncMode::Fdatasync },
        busy_group_interval: storage.group_interval,
        busy_group_phase: storage.group_phase,
        ..WalOptions::default()
    };
    let mut config = ReplicaConfig::new(group.me, group.members.iter().map(|m| m.raft_id).collect());
    config.election_ticks = ELECTION_TICKS;
    config.heartbeat_ticks = HEARTBEAT_TICKS;
    config.snapshot_every_entries = group_options.snapshot_every_entries;
    let frame_bytes_max = twophase_net::NetLimits::default().max_frame_bytes as usize;
    config.message_bytes_max = config.message_bytes_max.min(frame_bytes_max - FRAME_HEADER_MARGIN_BYTES);
    config.batch_bytes_max = config.batch_bytes_max.min(config.message_bytes_max - FRAME_HEADER_MARGIN_BYTES);
    let dir = options.data_dir.join("raft");
    Replica::open(config, &dir, wal_options).with_context(|| format!("opening the replicated log in {}", dir.display()))
}

/// What a follower answers clients with: the leader it knows (by its `--peer` name and
/// address), if any.
fn not_leader(group: &Group, known: &RoleChange) -> NotLeader {
    let leader = known
        .leader_id
        .filter(|id| *id != group.me)
        .and_then(|id| group.by_id(id))
        .map(|member| LeaderHint { name: member.name.clone(), addr: member.addr });
    NotLeader { term: known.term, leader }
}

impl Node {
    fn reactor(&mut self) -> &mut Reactor {
        match (&mut self.leading, &mut self.follower_net) {
            (Some(leading), _) => leading.role.reactor(),
            (None, Some(net)) => net,
            (None, None) => unreachable!("a node always has a network"),
        }
    }

    fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut inbound = Vec::new();
        let mut next_tick = Instant::now() + TICK;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = self.clock.now();
            let until_tick = next_tick.saturating_duration_since(Instant::now());
            let engine_wait = self.leading.as_ref().and_then(|l| l.role.next_deadline()).map(|d| d.since(now));
            let pending = self.leading.as_ref().is_some_and(|l| !l.fx.appends.is_empty() || !l.fx.outputs.is_empty());
            let wait = if pending { Duration::ZERO } else { until_tick.min(engine_wait.unwrap_or(MAX_WAIT)) };
            self.reactor().turn(Some(wait.min(MAX_WAIT)), &mut inbound).context("the network failed")?;
            let now = self.clock.now();
            for event in inbound.drain(..) {
                self.on_inbound(now, event)?;
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                self.replica.tick();
            }
            if let Some(leading) = &mut self.leading
                && self.backlog.is_empty()
                && leading.role.next_deadline().is_some_and(|deadline| deadline <= now)
            {
                leading.role.on_tick(now, &mut leading.fx);
            }
            self.propose_appends();
            self.step_held(now);
            self.replica.poll().context("the replicated log failed")?;
            self.handle_outputs()?;
            self.start_leading_when_caught_up()?;
            self.release();
            self.publish_group_status();
        }
    }

    fn on_inbound(&mut self, now: Time, event: Inbound) -> anyhow::Result<()> {
        match event {
            Inbound::Accepted { conn, identity, .. } if identity.role == NetRole::Coordinator => {
                match self.group.by_name(&identity.name).map(|m| m.raft_id) {
                    Some(raft_id) if raft_id != self.group.me => {
                        self.raft_accepted.insert(conn, raft_id);
                    }
                    _ => {
                        let message = format!("coordinator {} is not a member of this group", identity.name);
                        super::refuse(self.reactor(), conn, message);
                    }
                }
            }
            Inbound::PeerUp { peer, conn, .. } if peer.0 >= RAFT_PEER_BASE => {
                self.raft_dialed.insert(peer.0 - RAFT_PEER_BASE, conn);
            }
            Inbound::PeerDown { peer } if peer.0 >= RAFT_PEER_BASE => {
                self.raft_dialed.remove(&(peer.0 - RAFT_PEER_BASE));
            }
            Inbound::Frame { conn, frame: Frame::Raft(bytes) } => self.on_raft(conn, &bytes)?,
            Inbound::Frame { conn, frame: Frame::AdminRequest(AdminOp::Status) } => self.answer_status(conn),
            Inbound::Closed { conn } if self.raft_accepted.remove(&conn).is_some() => {}
            other => match &mut self.leading {
                Some(_) if !self.backlog.is_empty() || !self.held.is_empty() => self.hold(other),
                Some(leading) => leading.role.on_inbound(now, other, &mut leading.fx),
                None => self.on_follower_inbound(other),
            },
        }
        Ok(())
    }

    /// Keeps an event for the engine until the backlog drains: in order, bounded. Beyond
    /// the bound a frame's connection is closed instead (its sender resends after
    /// reconnecting; a participant's lost vote times out, a lost ack is re-driven).
    fn hold(&mut self, event: Inbound) {
        if self.held.len() >= HELD_EVENTS_MAX
            && let Inbound::Frame { conn, .. } = event
        {
            tracing::warn!(
                conn,
                held = self.held.len(),
                "the leader is backlogged; closing a connection that sends more"
            );
            self.reactor().close(conn);
            return;
        }
        self.held.push_back(event);
    }

    /// Steps the held events once the backlog has drained (they run before anything newer).
    fn step_held(&mut self, now: Time) {
        if !self.backlog.is_empty() || self.held.is_empty() {
            return;
        }
        let Some(leading) = &mut self.leading else { return };
        tracing::debug!(events = self.held.len(), "the proposal backlog drained; stepping the held events");
        for event in self.held.drain(..) {
            leading.role.on_inbound(now, event, &mut leading.fx);
        }
        self.propose_appends();
    }

    fn on_raft(&mut self, conn: ConnId, bytes: &[u8]) -> anyhow::Result<()> {
        let sender = self
            .raft_accepted
            .get(&conn)
            .copied()
            .or_else(|| self.raft_dialed.iter().find(|(_, c)| **c == conn).map(|(id, _)| *id));
        let Some(sender) = sender else {
            super::refuse(self.reactor(), conn, "raft messages from a connection that is no group member".into());
            return Ok(());
        };
        match self.replica.step_from(sender, bytes) {
            Ok(()) => Ok(()),
            Err(ReplicaError::BadMessage(why)) => {
                tracing::warn!(sender, "refused a raft message: {why}");
                Ok(())
            }
            Err(err) => Err(err).context("the replicated log failed"),
        }
    }

    /// A follower serves no one but its group: a client gets `NotLeader` naming the leader
    /// as soon as its handshake is done (and any frame is answered alike), then the
    /// connection closes; an admin may ask `Status` (above) and `Topology`.
    fn on_follower_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Accepted { conn, identity, .. } if identity.role == NetRole::Client => self.turn_away(conn),
            Inbound::Frame { conn, frame: Frame::AdminRequest(AdminOp::Topology) } => {
                let resolved =
                    |addr: &String| super::coordinator::resolve(addr).map_or(addr.clone(), |a| a.to_string());
                let topology =
                    self.options.participants.iter().map(|(id, name, addr)| (*id, name.clone(), resolved(addr)));
                let frame = Frame::Topology(topology.collect());
                self.reactor().send(conn, frame.to_bytes());
            }
            Inbound::Frame { conn, frame } => {
                tracing::debug!(conn, kind = ?frame.kind(), "a follower turns a request away");
                self.turn_away(conn);
            }
            _ => {}
        }
    }

    /// Sends `NotLeader` and closes (after flushing it; the transport lingers so the peer
    /// reads it rather than a reset).
    fn turn_away(&mut self, conn: ConnId) {
        let answer = Frame::NotLeader(not_leader(&self.group, &self.known)).to_bytes();
        let net = self.reactor();
        net.send(conn, answer);
        net.close(conn);
    }

    /// This node's replication status (its own row, the other members unreported) as a
    /// dump: one `DumpChunk`, then `DumpEnd`.
    fn answer_status(&mut self, conn: ConnId) {
        let role = if self.replica.is_leader() { ReplicaRole::Leader } else { ReplicaRole::Follower };
        let rows: Vec<ReplicaStatus> = self
            .group
            .members
            .iter()
            .map(|member| {
                let me = member.raft_id == self.group.me;
                ReplicaStatus {
                    name: member.name.clone(),
                    role: if me { role } else { ReplicaRole::Unreported },
                    term: if me { self.replica.term() } else { 0 },
                    commit_index: if me { self.replica.commit_index() } else { 0 },
                    applied_index: if me { self.replica.applied().0 } else { 0 },
                    address: member.addr.to_string(),
                }
            })
            .collect();
        let keys = rows.len() as u64;
        let chunk = Frame::DumpChunk(rows.iter().map(ReplicaStatus::to_entry).collect());
        let end = Frame::DumpEnd(DumpEnd { keys, prepared: 0, in_doubt: 0, fsync: false });
        let net = self.reactor();
        net.send(conn, chunk.to_bytes());
        net.send(conn, end.to_bytes());
    }

    /// Proposes the records the engine appended since the last turn as one batch (more only
    /// beyond the batch size limit), and gates the outputs that wait for them.
    fn propose_appends(&mut self) {
        let Some(leading) = &mut self.leading else { return };
        if leading.fx.appends.is_empty() && leading.fx.outputs.is_empty() && self.backlog.is_empty() {
            return;
        }
        leading.role.observe(&leading.fx);
        let mut refused = None;
        for (lsn, record) in leading.fx.appends.drain(..) {
            if let Err(err) = self.encoder.push(lsn, &record, &mut self.payload) {
                refused = Some(err.to_string());
                break;
            }
            let urgent = leading.role.urgent(&record);
            if let Some(log) = leading.role.log_metrics() {
                log.appended(lsn, self.payload.len(), urgent);
            }
            leading.role.appended(&record);
        }
        if refused.is_none() {
            let was_empty = self.backlog.is_empty();
            if let Err(err) = self.backlog.propose(&mut self.replica, self.encoder.take()) {
                refused = Some(describe_refusal(&err));
            } else if was_empty && !self.backlog.is_empty() {
                tracing::debug!(held = self.backlog.len(), "raft's proposal queue is full; holding batches");
            }
        }
        if let Some(why) = refused {
            // The engine's numbering now has a gap the log does not: it cannot go on. Its
            // successor is built from what commits.
            tracing::warn!("a proposal was refused ({why}); rebuilding the engine from the replicated log");
            self.encoder.take();
            self.stop_leading();
            if self.replica.is_leader() {
                self.build_at = Some(self.replica.last_index());
            }
            return;
        }
        for output in leading.fx.outputs.drain(..) {
            leading.gate.push(output, &mut self.released);
        }
    }

    fn handle_outputs(&mut self) -> anyhow::Result<()> {
        let mut outputs = Vec::new();
        self.replica.drain_outputs(&mut outputs);
        for output in outputs {
            match output {
                Output::Send { to, bytes } => self.send_raft(to, bytes),
                Output::Apply(entry) => {
                    let last =
                        self.state.apply(&entry.data).with_context(|| format!("applying entry {}", entry.index))?;
                    match &mut self.leading {
                        Some(leading) if entry.term == leading.term => leading.gate.advance(last, &mut self.released),
                        Some(leading) if entry.term > leading.term => self.stop_leading(),
                        _ => {}
                    }
                }
                Output::Restore(snapshot) => {
                    assert!(self.leading.is_none(), "a leader never restores a snapshot over its own state");
                    self.state.restore(&snapshot.data)?;
                    // Operators (and tests) see that this member caught up from a snapshot.
                    tracing::info!(index = snapshot.index, "restored the leader's raft snapshot");
                }
                Output::SnapshotDue { index } => {
                    let data = self.state.snapshot();
                    self.replica.compact(index, data).context("compacting the replicated log")?;
                }
                Output::Role(change) => self.on_role(change),
            }
        }
        Ok(())
    }

    fn on_role(&mut self, change: RoleChange) {
        tracing::info!(term = change.term, leader = ?change.leader_id, is_leader = change.is_leader, "raft role");
        self.known = change;
        let leads_this_term = self.leading.as_ref().is_some_and(|l| l.term == change.term);
        if !change.is_leader || !leads_this_term {
            self.stop_leading();
        }
        self.build_at = if change.is_leader && self.leading.is_none() {
            // Raft's own entry of the new term is the last one: applied, everything
            // committed before the term is too.
            Some(self.replica.last_index())
        } else {
            None
        };
        self.elected_at = self.build_at.map(|_| Instant::now());
    }

    fn send_raft(&mut self, to: u64, bytes: Vec<u8>) {
        // Our own link to `to`, else the one `to` dialed here: after a member's network
        // restarts (a new leader's, at once) it dials everyone at once, while our own
        // redial waits out the transport's backoff; answering on its link saves the new
        // leader that wait before its first commit. Loss is tolerated: Raft resends.
        let dialed = self.raft_dialed.get(&to).copied();
        let accepted = || self.raft_accepted.iter().find(|(_, id)| **id == to).map(|(conn, _)| *conn);
        let Some(conn) = dialed.or_else(accepted) else { return };
        let frame = Frame::Raft(Bytes::from(bytes)).to_bytes();
        self.reactor().send(conn, frame);
    }

    fn start_leading_when_caught_up(&mut self) -> anyhow::Result<()> {
        let Some(index) = self.build_at else { return Ok(()) };
        if !self.replica.is_leader() || self.replica.applied().0 < index {
            return Ok(());
        }
        self.build_at = None;
        let elected_at = self.elected_at.take();
        let caught_up_at = Instant::now();
        let term = self.replica.term();
        let epoch_floor =
            Epoch(u32::try_from(term).ok().filter(|t| *t <= Epoch::MAX.0).context("raft term beyond epochs")?);
        let mut fx = CoordEffects::default();
        let engine = self.state.leader_engine(epoch_floor, self.clock.now(), &mut fx);
        let epoch = engine.epoch();
        let built_at = Instant::now();
        // The follower's network goes first: the leader's listens on the same address.
        self.follower_net = None;
        let network = Network { listen: self.listen, epoch, coordinators: true, participants: true };
        let (transport, _, topology) = network.start(&self.options)?;
        tracing::debug!(
            apply_wait_ms = elected_at.map_or(0, |at| caught_up_at.duration_since(at).as_millis() as u64),
            engine_build_ms = built_at.duration_since(caught_up_at).as_millis() as u64,
            network_start_ms = built_at.elapsed().as_millis() as u64,
            unfinished = engine.unfinished(),
            "failover: the new leader's phases"
        );
        let parts = RoleParts {
            topology,
            announcement: None,
            checkpoints: None,
            trace: self.exporter.take().map(CoordinatorTrace::new),
            metrics: std::mem::take(&mut self.metrics),
        };
        let role = CoordinatorRole::new(engine, transport, parts);
        let gate = DurabilityGate::new(self.state.last_lsn());
        self.leading = Some(Leading { role, gate, term, fx, elected_at });
        self.after_network_start();
        tracing::info!(term, epoch = epoch.0, "leading the group");
        println!("twophase coordinator {} leads term {term} with epoch {}", self.options.id, epoch.0);
        Ok(())
    }

    /// Drops the engine, what it held and its network, and serves as a follower.
    fn stop_leading(&mut self) {
        self.backlog.clear();
        self.held.clear();
        let Some(mut leading) = self.leading.take() else { return };
        tracing::warn!(term = leading.term, held = leading.gate.held(), "no longer leading; the engine stops deciding");
        let (metrics, trace) = leading.role.take_process_parts();
        self.metrics = metrics;
        self.exporter = trace.map(CoordinatorTrace::into_exporter);
        drop(leading);
        if let Err(err) = self.start_following() {
            // Cannot listen again: stay without a network would leave the group; fatal.
            panic!("restarting the network as a follower: {err:#}");
        }
    }

    fn start_following(&mut self) -> anyhow::Result<()> {
        let network = Network { listen: self.listen, epoch: Epoch(0), coordinators: true, participants: false };
        let (transport, addr, _) = network.start(&self.options)?;
        self.listen = addr;
        self.follower_net = Some(transport);
        self.after_network_start();
        Ok(())
    }

    /// A new network: dial every other member, and let the wal wake this one.
    fn after_network_start(&mut self) {
        self.raft_accepted.clear();
        self.raft_dialed.clear();
        let others: Vec<(u64, SocketAddr, String)> =
            self.group.others().map(|m| (m.raft_id, m.addr, m.name.clone())).collect();
        let net = self.reactor();
        for (raft_id, addr, name) in others {
            net.add_peer(PeerId(RAFT_PEER_BASE | raft_id), addr, name);
        }
        let waker = net.waker();
        *self.wake_slot.lock().expect("wake slot") = Box::new(move || {
            // A failed wake means the network is gone: the next one is woken instead.
            let _ = waker.wake();
        });
    }

    fn release(&mut self) {
        let Some(leading) = &mut self.leading else { return };
        leading.role.after_step(leading.gate.durable());
        if !self.released.is_empty() {
            if let Some(elected_at) = leading.elected_at.take() {
                let elapsed_ms = elected_at.elapsed().as_millis() as u64;
                tracing::debug!(elapsed_ms, "failover: the new leader's first outputs leave");
            }
            leading.role.route(&mut self.released);
        }
    }
}

impl Node {
    /// Every member's Raft state in its metrics; a follower publishes them here (a leader's
    /// role publishes after its engine's steps).
    fn publish_group_status(&mut self) {
        let status = GroupStatus {
            term: self.replica.term(),
            leader: self.leading.is_some(),
            commit_index: self.replica.commit_index(),
            applied_index: self.replica.applied().0,
        };
        match &mut self.leading {
            Some(leading) => leading.role.metrics().group(status),
            None => {
                self.metrics.group(status);
                self.metrics.after_following_turn();
            }
        }
    }
}

fn describe_refusal(err: &ProposeError) -> String {
    err.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(names: &[&str]) -> Vec<(String, String)> {
        names.iter().enumerate().map(|(i, name)| (name.to_string(), format!("127.0.0.1:{}", 7000 + i))).collect()
    }

    #[test]
    fn a_peer_name_longer_than_a_not_leader_frame_carries_is_refused() {
        let long = "c".repeat(twophase_net::LEADER_NAME_BYTES_MAX + 1);
        let err = Group::new("c1", &peers(&["c1", &long])).err().unwrap();
        assert!(err.to_string().contains("is longer than 255 bytes"), "{err}");
    }

    #[test]
    fn a_follower_names_the_known_leader_and_never_itself() {
        let group = Group::new("c2", &peers(&["c1", "c2", "c3"])).unwrap();
        let known = |leader_id| RoleChange { leader_id, term: 5, is_leader: false };
        let hint = not_leader(&group, &known(Some(1))).leader.unwrap();
        assert_eq!((hint.name.as_str(), hint.addr.to_string().as_str()), ("c1", "127.0.0.1:7000"));
        assert_eq!(not_leader(&group, &known(Some(2))), NotLeader { term: 5, leader: None });
        assert_eq!(not_leader(&group, &known(None)), NotLeader { term: 5, leader: None });
    }
}
