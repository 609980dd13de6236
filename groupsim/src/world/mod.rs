//! The simulated group: an event queue in simulated time, the replicas (`replicas`), the
//! participants and clients (`outside`), the faulty network and the faults (here), and the
//! checks after the run (`checks`).

mod checks;
mod outside;
mod replicas;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use twophase_engine::coordinator::CoordOutput;
use twophase_engine::message::{Reply, Submit, ToCoordinator, ToParticipant};
use twophase_engine::sim::checker::Observed;
use twophase_engine::sim::workload::Client;
use twophase_engine::{ClientId, Epoch, ParticipantId, Time};

use crate::{GroupConfig, GroupFaultCounts, GroupReport};
use outside::PartNode;
use replicas::ReplicaNode;

/// Upper bound on events per run, so a livelock fails the run instead of hanging it.
const MAX_EVENTS: u64 = 3_000_000;
/// One Raft tick of simulated time.
const TICK_US: u64 = 5_000;
/// Network delay of one message.
const DELAY_US: (u64, u64) = (50, 2_000);
const SYNC_US: (u64, u64) = (100, 1_000);
const STALLED_SYNC_US: (u64, u64) = (3_000, 20_000);
const RESTART_US: (u64, u64) = (20_000, 200_000);
const PARTITION_US: (u64, u64) = (20_000, 300_000);

/// Who an engine is: the replica and the term it leads (one engine per replica and term).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EngineId {
    pub replica: u64,
    pub term: u64,
    pub incarnation: u64,
}

#[derive(Debug)]
enum Event {
    Raft { to: u64, from: u64, bytes: Vec<u8> },
    RaftTick { replica: u64, incarnation: u64 },
    SyncDone { replica: u64, incarnation: u64, upto: twophase_wal::Lsn },
    EngineTick { engine: EngineId },
    Crash { replica: u64 },
    Restart { replica: u64 },
    Partition,
    ToParticipant { participant: u16, engine: EngineId, epoch: Epoch, message: ToParticipant },
    Connected { participant: u16, engine: EngineId, epoch: Epoch },
    ConnectionLost { participant: u16, engine: EngineId },
    ToCoordinator { engine: EngineId, from: ParticipantId, message: ToCoordinator },
    ParticipantTick { participant: u16 },
    Submit { replica: u64, client: u16, submit: Submit },
    Reply { client: u16, reply: Reply },
    NotLeader { client: u16, leader: Option<u64> },
    ClientWake { client: u16, token: u64 },
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
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// A network endpoint, for partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Replica(u64),
    Other,
}

pub(crate) struct World {
    config: GroupConfig,
    rng: ChaCha8Rng,
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    replicas: Vec<ReplicaNode>,
    participants: Vec<PartNode>,
    clients: Vec<Client>,
    /// Which replica each client sends to next.
    client_target: Vec<u64>,
    /// The client's next wake follows a `NotLeader` answer (to the leader it named).
    client_redirected: Vec<bool>,
    client_of_session: BTreeMap<ClientId, u16>,
    /// Replicas cut off from everyone else until then.
    isolated: Option<(Vec<u64>, Time)>,
    faults_until: Option<Time>,
    counts: GroupFaultCounts,
    events: u64,
    observed: Observed,
    /// Ground truth of the replicated log: the batch every replica applied at each index.
    committed: BTreeMap<u64, Bytes>,
    /// Every engine built, by epoch.
    engines_by_epoch: BTreeMap<Epoch, Vec<EngineId>>,
    /// Violations seen as they happened.
    violations: Vec<String>,
}

impl World {
    pub(crate) fn new(config: GroupConfig) -> World {
        let sim = &config.sim;
        let rng = ChaCha8Rng::seed_from_u64(sim.seed);
        let per_client = sim.transactions / sim.clients as usize;
        let extra = sim.transactions % sim.clients as usize;
        let mut clients: Vec<Client> =
            (0..sim.clients).map(|i| Client::new(i, per_client + usize::from((i as usize) < extra))).collect();
        clients[0].setup = twophase_engine::sim::workload::setup_transactions(sim);
        let participants = (0..sim.participants).map(|_| PartNode::default()).collect();
        World {
            client_target: (0..sim.clients).map(|i| 1 + i as u64 % config.replicas).collect(),
            client_redirected: vec![false; sim.clients as usize],
            replicas: Vec::new(),
            participants,
            clients,
            client_of_session: BTreeMap::new(),
            rng,
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            next_order: 0,
            isolated: None,
            faults_until: None,
            counts: GroupFaultCounts::default(),
            events: 0,
            observed: Observed::default(),
            committed: BTreeMap::new(),
            engines_by_epoch: BTreeMap::new(),
            violations: Vec::new(),
            config,
        }
    }

    fn schedule(&mut self, at: Time, event: Event) {
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Reverse(Scheduled { at, order, event }));
    }

    fn after_us(&mut self, range: (u64, u64)) -> Time {
        let us = self.rng.gen_range(range.0..=range.1);
        self.now + Duration::from_micros(us)
    }

    fn faults_active(&self) -> bool {
        self.faults_until.is_some_and(|until| self.now < until)
    }

    pub(crate) fn run(mut self) -> GroupReport {
        for id in 1..=self.config.replicas {
            self.replicas.push(ReplicaNode::new(id));
            self.start_replica(id);
        }
        for participant in 0..self.config.sim.participants {
            self.start_participant(participant);
        }
        self.schedule(Time::ZERO, Event::ClientWake { client: 0, token: 0 });
        let mut deadline = None;
        while let Some(Reverse(Scheduled { at, event, .. })) = self.queue.pop() {
            self.now = at;
            self.events += 1;
            if self.events > MAX_EVENTS {
                self.violations.push(format!("event budget of {MAX_EVENTS} exhausted at {at:?}"));
                break;
            }
            self.handle(event);
            let Some(until) = self.faults_until else { continue };
            if self.now < until {
                continue;
            }
            let bound = *deadline.get_or_insert(until + self.config.liveness_bound);
            if self.is_quiescent() {
                break;
            }
            if self.now > bound {
                let progress = self.describe_progress();
                self.violations.push(format!(
                    "liveness: not quiescent {:?} after faults stopped: {progress}",
                    self.config.liveness_bound
                ));
                break;
            }
        }
        if self.violations.is_empty() && !self.is_quiescent() {
            let progress = self.describe_progress();
            self.violations.push(format!("liveness: the run ended before quiescence: {progress}"));
        }
        self.finish()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Raft { to, from, bytes } => self.deliver_raft(to, from, bytes),
            Event::RaftTick { replica, incarnation } => self.raft_tick(replica, incarnation),
            Event::SyncDone { replica, incarnation, upto } => self.sync_done(replica, incarnation, upto),
            Event::EngineTick { engine } => self.engine_tick(engine),
            Event::Crash { replica } => self.crash(replica),
            Event::Restart { replica } => self.start_replica(replica),
            Event::Partition => self.partition(),
            Event::ToParticipant { participant, engine, epoch, message } => {
                self.participant_message(participant, engine, epoch, message)
            }
            Event::Connected { participant, engine, epoch } => self.participant_connected(participant, engine, epoch),
            Event::ConnectionLost { participant, engine } => self.participant_lost(participant, engine),
            Event::ToCoordinator { engine, from, message } => self.coordinator_message(engine, from, message),
            Event::ParticipantTick { participant } => self.participant_tick(participant),
            Event::Submit { replica, client, submit } => self.submit(replica, client, submit),
            Event::Reply { client, reply } => self.client_reply(client, reply),
            Event::NotLeader { client, leader } => self.not_leader(client, leader),
            Event::ClientWake { client, token } => self.client_wake(client, token),
        }
    }

    // ---- the network -------------------------------------------------------------------

    fn cut(&self, a: Endpoint, b: Endpoint) -> bool {
        let Some((isolated, until)) = &self.isolated else { return false };
        if self.now >= *until {
            return false;
        }
        let inside = |e: Endpoint| matches!(e, Endpoint::Replica(id) if isolated.contains(&id));
        inside(a) != inside(b)
    }

    /// Sends a message: dropped on a cut link or by chance, maybe duplicated, delayed at
    /// random (so reordered).
    fn send(&mut self, from: Endpoint, to: Endpoint, event: impl Fn() -> Event) {
        if self.cut(from, to) {
            self.counts.dropped += 1;
            return;
        }
        let faults = self.config.faults;
        // Messages between engines and participants ride TCP: never lost, but a deposed
        // leader's may arrive late. Raft and client messages may be lost or duplicated.
        let lossy = matches!((from, to), (Endpoint::Replica(_), Endpoint::Replica(_)));
        if lossy && self.faults_active() && self.rng.gen_bool(faults.drop_probability) {
            self.counts.dropped += 1;
            return;
        }
        let copies = if lossy && self.faults_active() && self.rng.gen_bool(faults.duplicate_probability) {
            self.counts.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.after_us(DELAY_US);
            self.schedule(at, event());
        }
    }

    fn route_engine_outputs(&mut self, engine: EngineId, epoch: Epoch, outputs: Vec<CoordOutput>) {
        let from = Endpoint::Replica(engine.replica);
        for output in outputs {
            match output {
                CoordOutput::ToParticipant(to, message) => {
                    let participant = to.0 - 1;
                    self.send(from, Endpoint::Other, || Event::ToParticipant {
                        participant,
                        engine,
                        epoch,
                        message: message.clone(),
                    });
                }
                CoordOutput::ToClient(reply) => {
                    let Some((session, _)) = reply.request() else { continue };
                    let Some(&client) = self.client_of_session.get(&session) else { continue };
                    self.send(from, Endpoint::Other, || Event::Reply { client, reply: reply.clone() });
                }
                CoordOutput::ToConnection { conn, reply } => {
                    let client = u16::try_from(conn).expect("a client index");
                    self.send(from, Endpoint::Other, || Event::Reply { client, reply: reply.clone() });
                }
                CoordOutput::Warning(_) => {}
            }
        }
    }

    // ---- faults --------------------------------------------------------------------------

    /// Set-up is committed: start the other clients and schedule the faults.
    fn begin_main_phase(&mut self) {
        self.observed.setup_done_at = self.now;
        let faults = self.config.faults;
        let window_us = faults.window.as_micros() as u64;
        self.faults_until = Some(self.now + faults.window);
        for client in 1..self.clients.len() as u16 {
            let token = self.clients[client as usize].wake_token;
            let at = self.after_us((0, 500));
            self.schedule(at, Event::ClientWake { client, token });
        }
        if window_us == 0 {
            return;
        }
        for _ in 0..self.rng.gen_range(0..=faults.max_crashes) {
            let at = self.after_us((0, window_us));
            let replica = self.rng.gen_range(1..=self.config.replicas);
            self.schedule(at, Event::Crash { replica });
        }
        for _ in 0..self.rng.gen_range(0..=faults.max_partitions) {
            let at = self.after_us((0, window_us));
            self.schedule(at, Event::Partition);
        }
    }

    /// Cuts a minority of the replicas (one or two) from everyone else for a while.
    fn partition(&mut self) {
        let minority = self.rng.gen_range(1..=(self.config.replicas - 1) / 2);
        let mut isolated = Vec::new();
        while (isolated.len() as u64) < minority {
            let id = self.rng.gen_range(1..=self.config.replicas);
            if !isolated.contains(&id) {
                isolated.push(id);
            }
        }
        let until = self.after_us(PARTITION_US);
        self.counts.partitions += 1;
        self.isolated = Some((isolated, until));
    }
}
