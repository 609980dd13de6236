//! The simulated world: an event queue in simulated time, nodes with their disks and
//! durability gates, a faulty network, crashes and restarts.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checker::{self, Observed};
use super::disk::Disk;
use super::workload::{self, Client, participant_id};
use super::{FaultCounts, SimConfig, SimReport};
use crate::coordinator::{CoordEffects, CoordOutput, Coordinator, CoordinatorConfig, CoordinatorSnapshot};
use crate::effects::{DurabilityGate, Effects};
use crate::message::{RejectReason, Reply, Submit, ToCoordinator, ToParticipant};
use crate::participant::{PartEffects, Participant, ParticipantConfig, ParticipantSnapshot};
use crate::record::{CoordRecord, LogRecord, PartRecord};
use crate::types::{Epoch, Lsn, ParticipantId, Time};

/// Upper bound on events per run, so a livelock fails the run instead of hanging it.
const MAX_EVENTS: u64 = 20_000_000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum NodeId {
    Coordinator,
    Participant(u16),
    Client(u16),
}

#[derive(Debug)]
enum Payload {
    ToParticipant { epoch: Epoch, message: ToParticipant },
    ToCoordinator { from: ParticipantId, message: ToCoordinator },
    Submit(Submit),
    Reply(Reply),
}

impl Payload {
    fn duplicate(&self) -> Payload {
        match self {
            Payload::ToParticipant { epoch, message } => {
                Payload::ToParticipant { epoch: *epoch, message: message.clone() }
            }
            Payload::ToCoordinator { from, message } => {
                Payload::ToCoordinator { from: *from, message: message.clone() }
            }
            Payload::Submit(submit) => Payload::Submit(submit.clone()),
            Payload::Reply(reply) => Payload::Reply(reply.clone()),
        }
    }
}

#[derive(Debug)]
enum Event {
    /// `incarnation` of the connection's server end when sent (client links only).
    Deliver {
        to: NodeId,
        from: NodeId,
        incarnation: u64,
        payload: Payload,
    },
    SyncDone {
        node: NodeId,
        incarnation: u64,
        upto: usize,
    },
    Release {
        node: NodeId,
        incarnation: u64,
        durable: Lsn,
    },
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    Partition {
        isolated: NodeId,
        duration: Duration,
    },
    ClientWake {
        client: u16,
        token: u64,
    },
    /// A participant snapshots its state (kept once its LSN is durable) and truncates its log.
    Snapshot {
        participant: u16,
    },
    /// The coordinator checkpoints (kept once its LSN is durable) and truncates its log.
    Checkpoint,
}

struct Scheduled {
    at: Time,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// A server node: its state machine (None while crashed), log and gate.
struct Node<E, R, O> {
    engine: Option<E>,
    disk: Disk<R>,
    gate: DurabilityGate<O>,
    fx: Effects<R, O>,
    incarnation: u64,
    sync_in_flight: bool,
    tick_at: Option<Time>,
}

impl<E, R: LogRecord + Clone, O> Node<E, R, O> {
    fn new() -> Self {
        Node {
            engine: None,
            disk: Disk::new(),
            gate: DurabilityGate::new(Lsn::NONE),
            fx: Effects::default(),
            incarnation: 0,
            sync_in_flight: false,
            tick_at: None,
        }
    }
}

type CoordNode = Node<Coordinator, CoordRecord, CoordOutput>;
type PartNode = Node<Participant, PartRecord, ToCoordinator>;

/// Simulated latencies, in microseconds.
const NET_DELAY_US: (u64, u64) = (20, 1500);
const SYNC_US: (u64, u64) = (100, 1000);
/// Now and then a device stalls a sync for much longer (real virtual disks do, for
/// milliseconds): it lets a crash fall between records the protocol assumes are usually
/// durable in order, such as a coordinator's `Staged` record and the votes it overlaps.
const STALLED_SYNC_US: (u64, u64) = (3_000, 20_000);
const STALLED_SYNC_PERCENT: u32 = 3;
const RELEASE_US: (u64, u64) = (0, 100);
const CLIENT_TIMEOUT: Duration = Duration::from_millis(400);
const DOWNTIME_MS: (u64, u64) = (1, 300);

pub(super) struct World {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    coordinator: CoordNode,
    participants: Vec<PartNode>,
    clients: Vec<Client>,
    /// Links deliver in order: the last delivery time per direction.
    link_clock: BTreeMap<(NodeId, NodeId), Time>,
    isolated: Option<(NodeId, Time)>,
    faults_until: Time,
    setup_done: bool,
    counts: FaultCounts,
    events: u64,
    observed: Observed,
    /// Each participant's installed snapshot (durable), and one waiting for its LSN.
    snapshots: Vec<Option<ParticipantSnapshot>>,
    pending_snapshots: Vec<Option<ParticipantSnapshot>>,
    /// The coordinator's installed checkpoint (durable), and one waiting for its LSN.
    checkpoint: Option<CoordinatorSnapshot>,
    pending_checkpoint: Option<CoordinatorSnapshot>,
}

const SNAPSHOT_EVERY_MS: (u64, u64) = (10, 150);

impl World {
    pub(super) fn new(config: SimConfig) -> World {
        assert!(config.participants >= 1 && config.clients >= 1);
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let per_client = config.transactions / config.clients as usize;
        let extra = config.transactions % config.clients as usize;
        let mut clients: Vec<Client> =
            (0..config.clients).map(|i| Client::new(i, per_client + usize::from((i as usize) < extra))).collect();
        clients[0].setup = workload::setup_transactions(&config);
        World {
            participants: (0..config.participants).map(|_| Node::new()).collect(),
            coordinator: Node::new(),
            clients,
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            next_order: 0,
            link_clock: BTreeMap::new(),
            isolated: None,
            faults_until: Time::ZERO,
            setup_done: false,
            counts: FaultCounts::default(),
            events: 0,
            observed: Observed::default(),
            snapshots: vec![None; config.participants as usize],
            pending_snapshots: vec![None; config.participants as usize],
            checkpoint: None,
            pending_checkpoint: None,
            config,
        }
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.next_order += 1;
        self.queue.push(Reverse(Scheduled { at, order: self.next_order, event }));
    }

    fn after_us(&mut self, (low, high): (u64, u64)) -> Time {
        self.now + Duration::from_micros(self.rng.gen_range(low..=high))
    }

    fn faults_active(&self) -> bool {
        self.setup_done && self.now < self.faults_until
    }

    fn coordinator_config(&self) -> CoordinatorConfig {
        let mut config = CoordinatorConfig::new((0..self.config.participants).map(participant_id).collect());
        config.prepare_timeout = Duration::from_millis(50);
        config.redrive_initial = Duration::from_millis(20);
        config.redrive_max = Duration::from_millis(200);
        config.max_client_sessions = 64;
        config.outcomes_per_client = 64;
        config.hash_seed = self.config.seed;
        #[cfg(test)]
        {
            config.bugs = self.config.bugs.coordinator;
        }
        config
    }

    fn participant_config(&self, index: u16) -> ParticipantConfig {
        let mut config = ParticipantConfig::new(participant_id(index));
        config.inquiry_after = Duration::from_millis(50);
        config.inquiry_max = Duration::from_millis(500);
        config.hash_seed = self.config.seed ^ (index as u64 + 1);
        #[cfg(test)]
        {
            config.bugs = self.config.bugs.participant;
        }
        config
    }

    pub(super) fn run(mut self) -> SimReport {
        self.start_node(NodeId::Coordinator);
        for index in 0..self.config.participants {
            self.start_node(NodeId::Participant(index));
        }
        self.schedule(Time::ZERO, Event::ClientWake { client: 0, token: 0 });
        for participant in 0..self.config.participants {
            let at = self.after_us((SNAPSHOT_EVERY_MS.0 * 1000, SNAPSHOT_EVERY_MS.1 * 1000));
            self.schedule(at, Event::Snapshot { participant });
        }
        let at = self.after_us((SNAPSHOT_EVERY_MS.0 * 1000, SNAPSHOT_EVERY_MS.1 * 1000));
        self.schedule(at, Event::Checkpoint);
        let mut violations = Vec::new();
        let mut deadline = None;
        while let Some(Reverse(Scheduled { at, event, .. })) = self.queue.pop() {
            self.now = at;
            self.events += 1;
            if self.events > MAX_EVENTS {
                violations.push(format!("event budget of {MAX_EVENTS} exhausted at {:?}", at));
                break;
            }
            self.handle(event);
            if self.setup_done && self.now >= self.faults_until {
                let bound = *deadline.get_or_insert(self.faults_until + self.config.liveness_bound);
                if self.is_quiescent() {
                    break;
                }
                if self.now > bound {
                    violations.push(format!(
                        "liveness: not quiescent {:?} after faults stopped: {}",
                        self.config.liveness_bound,
                        self.describe_progress()
                    ));
                    break;
                }
            }
        }
        if !self.is_quiescent() && violations.is_empty() {
            violations.push(format!("liveness: the run ended before quiescence: {}", self.describe_progress()));
        }
        self.finish(violations)
    }

    fn is_quiescent(&self) -> bool {
        self.clients.iter().all(Client::is_done)
            && self.coordinator.engine.as_ref().is_some_and(|c| c.unfinished() == 0)
            && self
                .participants
                .iter()
                .all(|p| p.engine.as_ref().is_some_and(|p| p.prepared() == 0 && p.locked_keys() == 0))
    }

    fn describe_progress(&self) -> String {
        let clients_waiting = self.clients.iter().filter(|c| !c.is_done()).count();
        let coordinator = match &self.coordinator.engine {
            Some(c) => format!("coordinator unfinished={}", c.unfinished()),
            None => "coordinator down".into(),
        };
        let participants: Vec<String> = self
            .participants
            .iter()
            .enumerate()
            .map(|(i, node)| match &node.engine {
                Some(p) => {
                    format!("p{} prepared={} in_doubt={} locked={}", i + 1, p.prepared(), p.in_doubt(), p.locked_keys())
                }
                None => format!("p{} down", i + 1),
            })
            .collect();
        format!("{clients_waiting} clients unfinished, {coordinator}, {}", participants.join(", "))
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, incarnation, payload } => self.deliver(to, from, incarnation, payload),
            Event::SyncDone { node, incarnation, upto } => self.sync_done(node, incarnation, upto),
            Event::Release { node, incarnation, durable } => self.release(node, incarnation, durable),
            Event::Tick { node, incarnation } => self.tick(node, incarnation),
            Event::Crash { node } => self.crash(node),
            Event::Restart { node } => self.start_node(node),
            Event::Partition { isolated, duration } => {
                self.counts.partitions += 1;
                self.isolated = Some((isolated, self.now + duration));
            }
            Event::ClientWake { client, token } => self.client_wake(client, token),
            Event::Snapshot { participant } => self.take_snapshot(participant),
            Event::Checkpoint => self.take_checkpoint(),
        }
    }

    // ---- nodes -------------------------------------------------------------------------

    fn start_node(&mut self, node: NodeId) {
        let now = self.now;
        match node {
            NodeId::Coordinator => {
                let config = self.coordinator_config();
                let log = self.coordinator.disk.read_back();
                let checkpoint = self.checkpoint.clone();
                self.pending_checkpoint = None;
                let node_state = &mut self.coordinator;
                node_state.gate = DurabilityGate::new(node_state.disk.durable_lsn());
                node_state.engine = Some(Coordinator::recover_from(config, checkpoint, log, now, &mut node_state.fx));
            }
            NodeId::Participant(index) => {
                let config = self.participant_config(index);
                let snapshot = self.snapshots[index as usize].clone();
                self.pending_snapshots[index as usize] = None;
                let node_state = &mut self.participants[index as usize];
                let log = node_state.disk.read_back();
                node_state.gate = DurabilityGate::new(node_state.disk.durable_lsn());
                node_state.engine = Some(Participant::recover(config, snapshot, log, now, &mut node_state.fx));
            }
            NodeId::Client(_) => unreachable!("clients do not restart"),
        }
        if now > Time::ZERO {
            self.counts.restarts += 1;
        }
        self.after_step(node);
    }

    fn crash(&mut self, node: NodeId) {
        let torn_probability = self.config.faults.torn_tail_probability;
        let loss = match node {
            NodeId::Coordinator => crash_node(&mut self.coordinator, &mut self.rng, torn_probability),
            NodeId::Participant(index) => {
                crash_node(&mut self.participants[index as usize], &mut self.rng, torn_probability)
            }
            NodeId::Client(_) => unreachable!("clients do not crash"),
        };
        let Some(loss) = loss else { return }; // Already down.
        self.counts.crashes += 1;
        self.counts.lost_records += loss.lost;
        self.counts.torn_tails += u64::from(loss.torn);
        let downtime = Duration::from_millis(self.rng.gen_range(DOWNTIME_MS.0..=DOWNTIME_MS.1));
        self.schedule(self.now + downtime, Event::Restart { node });
    }

    /// Drains a node's effects: appends go to its disk (starting a sync if none runs),
    /// outputs through its gate; then its next timer is scheduled.
    fn after_step(&mut self, node: NodeId) {
        let mut released_coord = Vec::new();
        let mut released_part = Vec::new();
        match node {
            NodeId::Coordinator => drain(&mut self.coordinator, &mut released_coord),
            NodeId::Participant(index) => drain(&mut self.participants[index as usize], &mut released_part),
            NodeId::Client(_) => return,
        }
        self.send_coordinator_outputs(released_coord);
        self.send_participant_outputs(node, released_part);
        self.maybe_start_sync(node);
        self.schedule_tick(node);
    }

    fn maybe_start_sync(&mut self, node: NodeId) {
        let (incarnation, upto) = {
            let (in_flight, disk_len, unsynced, incarnation) = match node {
                NodeId::Coordinator => node_sync_state(&self.coordinator),
                NodeId::Participant(index) => node_sync_state(&self.participants[index as usize]),
                NodeId::Client(_) => return,
            };
            if in_flight || !unsynced {
                return;
            }
            (incarnation, disk_len)
        };
        match node {
            NodeId::Coordinator => self.coordinator.sync_in_flight = true,
            NodeId::Participant(index) => self.participants[index as usize].sync_in_flight = true,
            NodeId::Client(_) => unreachable!(),
        }
        let stalled = self.rng.gen_range(0..100) < STALLED_SYNC_PERCENT;
        let at = self.after_us(if stalled { STALLED_SYNC_US } else { SYNC_US });
        self.schedule(at, Event::SyncDone { node, incarnation, upto });
    }

    fn sync_done(&mut self, node: NodeId, incarnation: u64, upto: usize) {
        let durable = match node {
            NodeId::Coordinator => complete_sync(&mut self.coordinator, incarnation, upto),
            NodeId::Participant(index) => complete_sync(&mut self.participants[index as usize], incarnation, upto),
            NodeId::Client(_) => unreachable!(),
        };
        let Some(durable) = durable else { return };
        match node {
            NodeId::Participant(index) => self.install_snapshot_if_durable(index),
            NodeId::Coordinator => self.install_checkpoint_if_durable(),
            NodeId::Client(_) => {}
        }
        // Releasing is a separate step, so a crash can fall between sync and send.
        let at = self.after_us(RELEASE_US);
        self.schedule(at, Event::Release { node, incarnation, durable });
        self.maybe_start_sync(node);
    }

    fn release(&mut self, node: NodeId, incarnation: u64, durable: Lsn) {
        match node {
            NodeId::Coordinator => {
                let mut released = Vec::new();
                if self.coordinator.incarnation != incarnation || self.coordinator.engine.is_none() {
                    return;
                }
                self.coordinator.gate.advance(durable, &mut released);
                self.send_coordinator_outputs(released);
            }
            NodeId::Participant(index) => {
                let mut released = Vec::new();
                let node_state = &mut self.participants[index as usize];
                if node_state.incarnation != incarnation || node_state.engine.is_none() {
                    return;
                }
                node_state.gate.advance(durable, &mut released);
                self.send_participant_outputs(node, released);
            }
            NodeId::Client(_) => unreachable!(),
        }
    }

    fn take_snapshot(&mut self, index: u16) {
        let next = self.after_us((SNAPSHOT_EVERY_MS.0 * 1000, SNAPSHOT_EVERY_MS.1 * 1000));
        self.schedule(next, Event::Snapshot { participant: index });
        let Some(engine) = self.participants[index as usize].engine.as_ref() else { return };
        self.pending_snapshots[index as usize] = Some(engine.snapshot());
        self.install_snapshot_if_durable(index);
    }

    /// A snapshot is kept only once every record it covers is durable; then the log before
    /// a random point it covers is truncated (recovery must skip what remains covered).
    fn install_snapshot_if_durable(&mut self, index: u16) {
        let i = index as usize;
        let durable = self.participants[i].disk.durable_lsn();
        let Some(snapshot) = self.pending_snapshots[i].take_if(|s| s.lsn <= durable) else { return };
        let cut = Lsn(self.rng.gen_range(0..=snapshot.lsn.0 + 1));
        self.snapshots[i] = Some(snapshot);
        self.participants[i].disk.truncate_before(cut);
    }

    fn take_checkpoint(&mut self) {
        let next = self.after_us((SNAPSHOT_EVERY_MS.0 * 1000, SNAPSHOT_EVERY_MS.1 * 1000));
        self.schedule(next, Event::Checkpoint);
        let Some(engine) = self.coordinator.engine.as_ref() else { return };
        self.pending_checkpoint = Some(engine.snapshot());
        self.install_checkpoint_if_durable();
    }

    /// As for participants: kept once durable, then the log before a random point it covers
    /// is truncated.
    fn install_checkpoint_if_durable(&mut self) {
        let durable = self.coordinator.disk.durable_lsn();
        let Some(checkpoint) = self.pending_checkpoint.take_if(|c| c.lsn <= durable) else { return };
        let cut = Lsn(self.rng.gen_range(0..=checkpoint.lsn.0 + 1));
        self.checkpoint = Some(checkpoint);
        self.coordinator.disk.truncate_before(cut);
    }

    fn schedule_tick(&mut self, node: NodeId) {
        let (deadline, tick_at, incarnation) = match node {
            NodeId::Coordinator => {
                let n = &self.coordinator;
                (n.engine.as_ref().and_then(Coordinator::next_deadline), n.tick_at, n.incarnation)
            }
            NodeId::Participant(index) => {
                let n = &self.participants[index as usize];
                (n.engine.as_ref().and_then(Participant::next_deadline), n.tick_at, n.incarnation)
            }
            NodeId::Client(_) => return,
        };
        let Some(deadline) = deadline else { return };
        if tick_at.is_some_and(|at| at <= deadline) {
            return;
        }
        let at = deadline.max(self.now);
        match node {
            NodeId::Coordinator => self.coordinator.tick_at = Some(at),
            NodeId::Participant(index) => self.participants[index as usize].tick_at = Some(at),
            NodeId::Client(_) => unreachable!(),
        }
        self.schedule(at, Event::Tick { node, incarnation });
    }

    fn tick(&mut self, node: NodeId, incarnation: u64) {
        let now = self.now;
        match node {
            NodeId::Coordinator => {
                let n = &mut self.coordinator;
                if n.incarnation != incarnation || n.tick_at != Some(now) {
                    return;
                }
                n.tick_at = None;
                let Some(engine) = n.engine.as_mut() else { return };
                engine.on_tick(now, &mut n.fx);
            }
            NodeId::Participant(index) => {
                let n = &mut self.participants[index as usize];
                if n.incarnation != incarnation || n.tick_at != Some(now) {
                    return;
                }
                n.tick_at = None;
                let Some(engine) = n.engine.as_mut() else { return };
                engine.on_tick(now, &mut n.fx);
            }
            NodeId::Client(_) => unreachable!(),
        }
        self.after_step(node);
    }

    // ---- network -----------------------------------------------------------------------

    fn send_coordinator_outputs(&mut self, outputs: Vec<CoordOutput>) {
        let Some(epoch) = self.coordinator.engine.as_ref().map(Coordinator::epoch) else { return };
        for output in outputs {
            match output {
                CoordOutput::ToParticipant(to, message) => {
                    let to = NodeId::Participant(to.0 - 1);
                    self.send(NodeId::Coordinator, to, Payload::ToParticipant { epoch, message });
                }
                CoordOutput::ToClient(reply) => {
                    let to = NodeId::Client((reply.client().0 - 1) as u16);
                    self.send(NodeId::Coordinator, to, Payload::Reply(reply));
                }
            }
        }
    }

    fn send_participant_outputs(&mut self, node: NodeId, outputs: Vec<ToCoordinator>) {
        let NodeId::Participant(index) = node else { return };
        for message in outputs {
            self.send(node, NodeId::Coordinator, Payload::ToCoordinator { from: participant_id(index), message });
        }
    }

    fn is_client_link(from: NodeId, to: NodeId) -> bool {
        matches!(from, NodeId::Client(_)) || matches!(to, NodeId::Client(_))
    }

    fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        match self.isolated {
            Some((isolated, until)) if self.now < until => (a == isolated) != (b == isolated),
            _ => false,
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        let faulty = self.faults_active();
        if self.partitioned(from, to) || (faulty && self.rng.gen_bool(self.config.faults.drop_probability)) {
            self.counts.dropped += 1;
            return;
        }
        let incarnation = self.coordinator.incarnation;
        if !Self::is_client_link(from, to) && faulty {
            if self.rng.gen_bool(self.config.faults.duplicate_probability) {
                self.counts.duplicated += 1;
                let at = self.after_us(NET_DELAY_US);
                self.schedule(at, Event::Deliver { to, from, incarnation, payload: payload.duplicate() });
            }
            if self.rng.gen_bool(self.config.faults.reorder_probability) {
                self.counts.reordered += 1;
                let at = self.after_us((NET_DELAY_US.0, NET_DELAY_US.1 * 4));
                self.schedule(at, Event::Deliver { to, from, incarnation, payload });
                return;
            }
        }
        // Links are connections: in order unless a fault above says otherwise.
        let earliest = self.link_clock.get(&(from, to)).copied().unwrap_or(Time::ZERO);
        let at = self.after_us(NET_DELAY_US).max(earliest + Duration::from_nanos(1));
        self.link_clock.insert((from, to), at);
        self.schedule(at, Event::Deliver { to, from, incarnation, payload });
    }

    fn deliver(&mut self, to: NodeId, from: NodeId, incarnation: u64, payload: Payload) {
        if self.partitioned(from, to) {
            self.counts.dropped += 1;
            return;
        }
        if Self::is_client_link(from, to) && incarnation != self.coordinator.incarnation {
            return; // The connection died with the coordinator.
        }
        let now = self.now;
        match (to, payload) {
            (NodeId::Participant(index), Payload::ToParticipant { epoch, message }) => {
                let n = &mut self.participants[index as usize];
                let Some(engine) = n.engine.as_mut() else { return };
                engine.on_message(now, epoch, message, &mut n.fx);
            }
            (NodeId::Coordinator, Payload::ToCoordinator { from, message }) => {
                let n = &mut self.coordinator;
                let Some(engine) = n.engine.as_mut() else { return };
                engine.on_message(now, from, message, &mut n.fx);
            }
            (NodeId::Coordinator, Payload::Submit(submit)) => {
                let n = &mut self.coordinator;
                let Some(engine) = n.engine.as_mut() else { return };
                engine.on_submit(now, submit, &mut n.fx);
            }
            (NodeId::Client(index), Payload::Reply(reply)) => return self.client_reply(index, reply),
            (to, payload) => unreachable!("{payload:?} misrouted to {to:?}"),
        }
        self.after_step(to);
    }

    // ---- clients -----------------------------------------------------------------------

    fn client_wake(&mut self, index: u16, token: u64) {
        let client = &mut self.clients[index as usize];
        if client.wake_token != token {
            return; // Superseded.
        }
        if client.pending.is_none() && client.start_next(&self.config, &mut self.rng).is_none() {
            return;
        }
        self.submit_pending(index);
    }

    /// Sends (or re-sends) the pending request and arms its retry timeout.
    fn submit_pending(&mut self, index: u16) {
        let client = &mut self.clients[index as usize];
        let pending = client.pending.as_ref().expect("a pending request");
        let submit = Submit { client: client.id, seq: pending.seq, ops: pending.ops.clone() };
        self.observed.issued.entry((client.id, pending.seq)).or_insert_with(|| pending.ops.clone());
        client.wake_token += 1;
        let token = client.wake_token;
        self.schedule(self.now + CLIENT_TIMEOUT, Event::ClientWake { client: index, token });
        self.send(NodeId::Client(index), NodeId::Coordinator, Payload::Submit(submit));
    }

    fn client_reply(&mut self, index: u16, reply: Reply) {
        let client = &mut self.clients[index as usize];
        let current = client.pending.as_ref().map(|p| p.seq);
        match reply {
            Reply::Rejected { seq, reason: RejectReason::Busy, .. } if current == Some(seq) => {
                client.wake_token += 1;
                let token = client.wake_token;
                let at = self.after_us((1000, 5000));
                self.schedule(at, Event::ClientWake { client: index, token });
            }
            Reply::Rejected { seq, reason, .. } => {
                if reason == RejectReason::SeqTooOld {
                    self.observed
                        .client_anomalies
                        .push(format!("client {} seq {seq}: rejected as too old", client.id.0));
                }
            }
            Reply::Outcome { seq, outcome, .. } => {
                let key = (client.id, seq);
                match client.outcomes.get(&seq) {
                    Some(first) if first.is_committed() != outcome.is_committed() => {
                        self.observed
                            .client_anomalies
                            .push(format!("client {} seq {seq}: heard {first:?} and later {outcome:?}", client.id.0));
                    }
                    Some(_) => {}
                    None => {
                        client.outcomes.insert(seq, outcome.clone());
                        self.observed.outcomes.insert(key, outcome.clone());
                    }
                }
                if current != Some(seq) {
                    return; // A late duplicate of an answered request.
                }
                let setup_finished = client.complete(&outcome);
                client.wake_token += 1;
                let token = client.wake_token;
                let at = self.after_us((0, 200));
                self.schedule(at, Event::ClientWake { client: index, token });
                if setup_finished {
                    self.begin_main_phase();
                }
            }
        }
    }

    /// Set-up is committed: start the other clients and schedule the faults.
    fn begin_main_phase(&mut self) {
        self.setup_done = true;
        self.observed.setup_done_at = self.now;
        let faults = self.config.faults;
        self.faults_until = self.now + faults.window;
        for index in 1..self.config.clients {
            let token = self.clients[index as usize].wake_token;
            let at = self.after_us((0, 500));
            self.schedule(at, Event::ClientWake { client: index, token });
        }
        let window_us = faults.window.as_micros() as u64;
        if window_us == 0 {
            return;
        }
        let crashes = self.rng.gen_range(0..=faults.max_crashes);
        for _ in 0..crashes {
            let node = self.random_server();
            let at = self.after_us((0, window_us));
            self.schedule(at, Event::Crash { node });
        }
        let partitions = self.rng.gen_range(0..=faults.max_partitions);
        for _ in 0..partitions {
            let isolated = self.random_server();
            let duration = Duration::from_millis(self.rng.gen_range(10..=300));
            let at = self.after_us((0, window_us));
            self.schedule(at, Event::Partition { isolated, duration });
        }
    }

    fn random_server(&mut self) -> NodeId {
        let pick = self.rng.gen_range(0..=self.config.participants);
        if pick == 0 { NodeId::Coordinator } else { NodeId::Participant(pick - 1) }
    }

    // ---- the end -----------------------------------------------------------------------

    fn finish(mut self, mut violations: Vec<String>) -> SimReport {
        let coordinator_log: Vec<(Lsn, CoordRecord)> = self.coordinator.disk.durable_history();
        let participant_logs: Vec<Vec<(Lsn, PartRecord)>> =
            self.participants.iter().map(|p| p.disk.durable_history()).collect();
        let live_states: Vec<Option<&Participant>> = self.participants.iter().map(|p| p.engine.as_ref()).collect();
        violations.extend(checker::check(
            &self.config,
            &self.observed,
            &coordinator_log,
            &participant_logs,
            &live_states,
        ));
        violations.extend(self.check_recovery());
        let committed = self.observed.outcomes.values().filter(|o| o.is_committed()).count();
        let setup = self.config.participants as usize;
        let transactions = self.observed.outcomes.len();
        let mut aborts_by_reason = std::collections::BTreeMap::new();
        for outcome in self.observed.outcomes.values() {
            if let crate::ops::Outcome::Aborted { reason } = outcome {
                *aborts_by_reason.entry(reason.label()).or_insert(0) += 1;
            }
        }
        SimReport {
            seed: self.config.seed,
            aborts_by_reason,
            transactions: transactions.saturating_sub(setup),
            committed: committed.saturating_sub(setup),
            aborted: transactions - committed,
            faults: self.counts,
            violations,
            sim_time: self.now.since(Time::ZERO),
            events: self.events,
        }
    }

    /// Restarting every node from its durable log must give the state it had.
    fn check_recovery(&mut self) -> Vec<String> {
        let mut violations = Vec::new();
        // A clean shutdown: what is still unsynced (End, Aborted records) reaches the disk.
        self.coordinator.disk.sync_all();
        for node in &mut self.participants {
            node.disk.sync_all();
        }
        let now = self.now;
        let mut fx = CoordEffects::default();
        let config = self.coordinator_config();
        let checkpoint = self.checkpoint.clone();
        let recovered = Coordinator::recover_from(config, checkpoint, self.coordinator.disk.read_back(), now, &mut fx);
        if recovered.unfinished() != 0 {
            violations.push(format!(
                "recovery: coordinator restarts with {} unfinished transactions after quiescence",
                recovered.unfinished()
            ));
        }
        for index in 0..self.config.participants {
            let config = self.participant_config(index);
            let mut fx = PartEffects::default();
            let node = &self.participants[index as usize];
            let snapshot = self.snapshots[index as usize].clone();
            let recovered = Participant::recover(config, snapshot, node.disk.read_back(), now, &mut fx);
            let Some(live) = node.engine.as_ref() else { continue };
            let mut live_state: Vec<_> = live.kv().iter().collect();
            let mut recovered_state: Vec<_> = recovered.kv().iter().collect();
            live_state.sort();
            recovered_state.sort();
            if live_state != recovered_state {
                violations.push(format!("recovery: p{} rebuilt from its log differs from its live state", index + 1));
            }
        }
        violations
    }
}

fn drain<E, R: LogRecord + Clone, O>(node: &mut Node<E, R, O>, released: &mut Vec<O>) {
    for (lsn, record) in node.fx.appends.drain(..) {
        node.disk.write(lsn, record);
    }
    for output in node.fx.outputs.drain(..) {
        node.gate.push(output, released);
    }
}

fn node_sync_state<E, R: LogRecord + Clone, O>(node: &Node<E, R, O>) -> (bool, usize, bool, u64) {
    (node.sync_in_flight || node.engine.is_none(), node.disk.len(), node.disk.has_unsynced(), node.incarnation)
}

fn complete_sync<E, R: LogRecord + Clone, O>(node: &mut Node<E, R, O>, incarnation: u64, upto: usize) -> Option<Lsn> {
    if node.incarnation != incarnation || node.engine.is_none() {
        return None;
    }
    node.sync_in_flight = false;
    Some(node.disk.synced_upto(upto))
}

fn crash_node<E, R: LogRecord + Clone, O>(
    node: &mut Node<E, R, O>,
    rng: &mut ChaCha8Rng,
    torn_probability: f64,
) -> Option<super::disk::CrashLoss> {
    node.engine.as_ref()?;
    node.engine = None;
    node.incarnation += 1;
    node.sync_in_flight = false;
    node.tick_at = None;
    node.fx.clear();
    node.gate = DurabilityGate::new(Lsn::NONE);
    Some(node.disk.crash(rng, torn_probability))
}
