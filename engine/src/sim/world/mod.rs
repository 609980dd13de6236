//! The simulated world: an event queue in simulated time, nodes with their disks and
//! durability gates, a faulty network, crashes and restarts. Split by responsibility:
//! `events` (the queue), `network` (links, faults on messages, delivery), `nodes` (state
//! machines, disks, syncs, snapshots, timers), `faults` (crashes, partitions) and `clients`
//! (the simulated clients and their sessions).

mod clients;
mod events;
mod faults;
mod interactive;
mod links;
mod network;
mod nodes;
mod waits;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checker::{self, Observed};
use super::workload::{self, Client, participant_id};
use super::{FaultCounts, SimConfig, SimReport};
use crate::coordinator::{CoordEffects, Coordinator, CoordinatorConfig, CoordinatorSnapshot, SessionLimits};
use crate::participant::{PartEffects, Participant, ParticipantConfig, ParticipantSnapshot};
use crate::record::{CoordRecord, PartRecord};
use crate::types::{ClientId, Lsn, Time};
use events::{Event, Scheduled};
use nodes::{CoordNode, Node, PartNode};

/// Upper bound on events per run, so a livelock fails the run instead of hanging it.
const MAX_EVENTS: u64 = 20_000_000;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum NodeId {
    Coordinator,
    Participant(u16),
    Client(u16),
}

pub(super) struct World {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    coordinator: CoordNode,
    participants: Vec<PartNode>,
    clients: Vec<Client>,
    /// Which client holds each session, to route a session's replies.
    client_of_session: BTreeMap<ClientId, u16>,
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
    /// Ground truth of lock waits at the participants, for the deadlock checks.
    waits: waits::WaitTruth,
    /// Coordinator–participant connections that broke and have not reconnected (`links`),
    /// each with the id of its break.
    broken_links: BTreeMap<u16, u64>,
    link_breaks: u64,
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
        clients.extend(interactive::interactive_clients(&config));
        World {
            participants: (0..config.participants).map(|_| Node::new()).collect(),
            coordinator: Node::new(),
            clients,
            client_of_session: BTreeMap::new(),
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
            waits: waits::WaitTruth::default(),
            broken_links: BTreeMap::new(),
            link_breaks: 0,
            config,
        }
    }

    fn faults_active(&self) -> bool {
        self.setup_done && self.now < self.faults_until
    }

    fn coordinator_config(&self) -> CoordinatorConfig {
        let mut config = CoordinatorConfig::new((0..self.config.participants).map(participant_id).collect());
        config.prepare_timeout = Duration::from_millis(50);
        config.redrive_initial = Duration::from_millis(20);
        config.redrive_max = Duration::from_millis(200);
        config.sessions = SessionLimits {
            sessions_max: 64,
            sessions_per_identity_max: 2,
            outcomes_per_session: 64,
            session_bytes_max: 64 * 1024,
        };
        config.hash_seed = self.config.seed;
        // Participants roll back what the coordinator forgot after `open_idle_max` (below):
        // the largest idle timeout stays under it.
        config.interactive.idle_timeout_max = Duration::from_millis(1000);
        #[cfg(test)]
        {
            config.bugs = self.config.bugs.coordinator;
            config.interactive.bugs = self.config.bugs.detector;
        }
        config
    }

    fn participant_config(&self, index: u16) -> ParticipantConfig {
        let mut config = ParticipantConfig::new(participant_id(index));
        config.inquiry_after = Duration::from_millis(50);
        config.inquiry_max = Duration::from_millis(500);
        config.hash_seed = self.config.seed ^ (index as u64 + 1);
        config.lock_wait_timeout = self.config.interactive.lock_wait_timeout;
        config.open_idle_max = Duration::from_millis(2000);
        #[cfg(test)]
        {
            config.bugs = self.config.bugs.participant;
            if let Some(early) = self.config.bugs.lock_timeout_early {
                config.lock_wait_timeout = early;
            }
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
            && self.coordinator.engine.as_ref().is_some_and(|c| c.unfinished() == 0 && c.open_transactions() == 0)
            && self.participants.iter().all(|p| {
                p.engine
                    .as_ref()
                    .is_some_and(|p| p.prepared() == 0 && p.locked_keys() == 0 && p.open_transactions() == 0)
            })
    }

    fn describe_progress(&self) -> String {
        let clients_waiting = self.clients.iter().filter(|c| !c.is_done()).count();
        let stuck: Vec<String> = self
            .clients
            .iter()
            .filter(|c| !c.is_done())
            .filter_map(|c| {
                c.conversation.as_ref().map(|t| format!("{} {:?} {:?} seq {:?}", c.identity, t.txid, t.stage, t.seq))
            })
            .collect();
        // Interactive clients also say where their transaction stands.
        let clients_waiting = format!("{clients_waiting} {stuck:?}");
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
            Event::LinkBroken { participant, incarnation, break_id } => {
                self.link_broken_event(participant, incarnation, break_id)
            }
            Event::LinkRestored { participant, incarnation, break_id } => {
                self.link_restored_event(participant, incarnation, break_id)
            }
            Event::ClientWake { client, token } => self.client_wake(client, token),
            Event::Snapshot { participant } => self.take_snapshot(participant),
            Event::Checkpoint => self.take_checkpoint(),
        }
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
