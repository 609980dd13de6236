//! The coordinator replicas, driven as `src/node/replicated.rs` drives them: each engine
//! step's records are proposed as one batch; the outputs waiting for them leave once the
//! batch is committed and applied here (the gate advances on applied batches of the
//! leader's own term); a leader builds its engine once it applied everything committed
//! before its term, with epoch ≥ term; a deposed leader drops its engine.

use std::time::Duration;

use rand::Rng;
use twophase_engine::coordinator::{CoordEffects, CoordOutput, Coordinator, CoordinatorConfig, SessionLimits};
use twophase_engine::{DurabilityGate, Epoch, Time};
use twophase_replica::{Output, Replica, ReplicaConfig, WalStorage};
use twophase_wal::Lsn;

use super::{DELAY_US, Endpoint, EngineId, Event, RESTART_US, STALLED_SYNC_US, SYNC_US, TICK_US, World};
use crate::applied::{AppliedState, BatchEncoder};
use crate::backlog::ProposalBacklog;
use crate::disk::SimDisk;

const ELECTION_TICKS: (usize, usize) = (10, 16);
const HEARTBEAT_TICKS: usize = 2;
/// Small, so that snapshots, compaction and restores happen in short runs.
const SNAPSHOT_EVERY_ENTRIES: u64 = 64;
const FOLD_EVERY_RECORDS: usize = 128;
const BATCH_BYTES_MAX: usize = 64 << 10;
const RECORD_BYTES_MAX: usize = 1 << 20;

/// The leader's engine and its gate.
pub(super) struct Leading {
    pub id: EngineId,
    pub engine: Coordinator,
    pub gate: DurabilityGate<CoordOutput>,
    pub fx: CoordEffects,
    pub tick_at: Option<Time>,
}

/// One coordinator replica: its disk (which outlives crashes), and while up its Replica,
/// applied state and, on the leader, its engine.
pub(super) struct ReplicaNode {
    pub id: u64,
    pub disk: SimDisk,
    pub replica: Option<Replica<SimDisk>>,
    pub state: Option<AppliedState>,
    pub leading: Option<Leading>,
    /// This leader builds its engine once it has applied this index.
    pub build_at: Option<u64>,
    pub incarnation: u64,
    pub sync_in_flight: bool,
    pub encoder: BatchEncoder,
    /// Batches the leader's engine numbered that Raft's full queue did not take yet; while
    /// any are held the engine gets no input.
    pub backlog: ProposalBacklog,
}

impl ReplicaNode {
    /// The engine takes no input while batches are held (back-pressure).
    pub(super) fn backlogged(&self) -> bool {
        !self.backlog.is_empty()
    }
}

impl ReplicaNode {
    pub(super) fn new(id: u64) -> ReplicaNode {
        ReplicaNode {
            id,
            disk: SimDisk::new(),
            replica: None,
            state: None,
            leading: None,
            build_at: None,
            incarnation: 0,
            sync_in_flight: false,
            encoder: BatchEncoder::new(BATCH_BYTES_MAX),
            backlog: ProposalBacklog::default(),
        }
    }
}

impl World {
    fn node(&mut self, id: u64) -> &mut ReplicaNode {
        &mut self.replicas[(id - 1) as usize]
    }

    pub(super) fn coordinator_config(&self) -> CoordinatorConfig {
        let sim = &self.config.sim;
        let participants = (0..sim.participants).map(twophase_engine::sim::workload::participant_id).collect();
        let mut config = CoordinatorConfig::new(participants);
        config.prepare_timeout = Duration::from_millis(50);
        config.redrive_initial = Duration::from_millis(20);
        config.redrive_max = Duration::from_millis(200);
        config.sessions = SessionLimits {
            sessions_max: 64,
            sessions_per_identity_max: 4,
            outcomes_per_session: 64,
            session_bytes_max: 64 * 1024,
        };
        config.hash_seed = sim.seed;
        config
    }

    /// Starts (or restarts) a replica from what its disk holds.
    pub(super) fn start_replica(&mut self, id: u64) {
        let voters: Vec<u64> = (1..=self.config.replicas).collect();
        let mut config = ReplicaConfig::new(id, voters);
        config.election_randomized = false;
        config.election_ticks = self.rng.gen_range(ELECTION_TICKS.0..ELECTION_TICKS.1);
        config.heartbeat_ticks = HEARTBEAT_TICKS;
        config.snapshot_every_entries = SNAPSHOT_EVERY_ENTRIES;
        config.batch_bytes_max = BATCH_BYTES_MAX;
        config.proposals_in_flight_max = self.config.proposals_in_flight_max;
        let coordinator_config = self.coordinator_config();
        let phase = self.after_us((1, TICK_US));
        let node = self.node(id);
        let (records, next_lsn) = node.disk.read_back();
        let storage = WalStorage::recover(node.disk.clone(), next_lsn, &records, RECORD_BYTES_MAX, &config.voters)
            .expect("a simulated disk holds only what the storage wrote");
        node.replica = Some(Replica::on_storage(config, storage).expect("a valid configuration"));
        node.state = Some(AppliedState::new(coordinator_config, FOLD_EVERY_RECORDS));
        node.incarnation += 1;
        node.sync_in_flight = false;
        node.build_at = None;
        let incarnation = node.incarnation;
        self.schedule(phase, Event::RaftTick { replica: id, incarnation });
        self.step_replica(id);
    }

    pub(super) fn crash(&mut self, id: u64) {
        let node = self.node(id);
        if node.replica.is_none() {
            return;
        }
        node.replica = None;
        node.state = None;
        node.build_at = None;
        node.encoder.take();
        let lost = node.disk.crash();
        self.counts.crashes += 1;
        self.counts.lost_records += lost as u64;
        self.stop_leading(id);
        let at = self.after_us(RESTART_US);
        self.schedule(at, Event::Restart { replica: id });
    }

    pub(super) fn raft_tick(&mut self, id: u64, incarnation: u64) {
        let node = self.node(id);
        if node.incarnation != incarnation {
            return;
        }
        let Some(replica) = node.replica.as_mut() else { return };
        replica.tick();
        let at = self.now + Duration::from_micros(TICK_US);
        self.schedule(at, Event::RaftTick { replica: id, incarnation });
        self.step_replica(id);
    }

    pub(super) fn deliver_raft(&mut self, to: u64, from: u64, bytes: Vec<u8>) {
        if self.cut(Endpoint::Replica(from), Endpoint::Replica(to)) {
            self.counts.dropped += 1;
            return;
        }
        let Some(replica) = self.node(to).replica.as_mut() else { return };
        if let Err(err) = replica.step_from(from, &bytes) {
            assert!(!err.is_fatal(), "replica {to} failed on a message: {err}");
        }
        self.step_replica(to);
    }

    pub(super) fn sync_done(&mut self, id: u64, incarnation: u64, upto: Lsn) {
        let node = self.node(id);
        if node.incarnation != incarnation || node.replica.is_none() {
            return;
        }
        node.sync_in_flight = false;
        if self.rng.gen_bool(self.config.faults.sync_failure_probability) && self.faults_active() {
            // A failed fsync: the log is broken, the replica stops as the binary does.
            self.counts.failed_syncs += 1;
            return self.crash(id);
        }
        self.node(id).disk.synced_upto(upto);
        self.step_replica(id);
    }

    fn maybe_start_sync(&mut self, id: u64) {
        let node = self.node(id);
        if node.sync_in_flight || node.replica.is_none() || !node.disk.has_unsynced() {
            return;
        }
        node.sync_in_flight = true;
        let (upto, incarnation) = (node.disk.last_lsn(), node.incarnation);
        let stalled = self.faults_active() && self.rng.gen_bool(self.config.faults.sync_stall_probability);
        let at = self.after_us(if stalled { STALLED_SYNC_US } else { SYNC_US });
        self.schedule(at, Event::SyncDone { replica: id, incarnation, upto });
    }

    pub(super) fn engine_tick(&mut self, engine: EngineId) {
        let now = self.now;
        let backlogged = self.node(engine.replica).backlogged();
        let Some(leading) = self.leading_mut(engine) else { return };
        if leading.tick_at != Some(now) {
            return;
        }
        if backlogged {
            // No input while batches are held, timers included: try again a tick later.
            let at = now + Duration::from_micros(TICK_US);
            leading.tick_at = Some(at);
            self.schedule(at, Event::EngineTick { engine });
            return;
        }
        leading.tick_at = None;
        leading.engine.on_tick(now, &mut leading.fx);
        self.step_replica(engine.replica);
    }

    pub(super) fn leading_mut(&mut self, engine: EngineId) -> Option<&mut Leading> {
        self.node(engine.replica).leading.as_mut().filter(|l| l.id == engine)
    }

    /// One turn of the runtime's loop, after any input: propose the engine's records, poll
    /// the replica, handle its outputs, build the engine when caught up, release.
    pub(super) fn step_replica(&mut self, id: u64) {
        if self.node(id).replica.is_none() {
            return;
        }
        // Outputs may make more work (an applied batch builds the engine, whose epoch
        // record is proposed at once): a few rounds until nothing is left.
        for _ in 0..8 {
            self.propose_appends(id);
            let Some(replica) = self.node(id).replica.as_mut() else { return };
            replica.poll().expect("a simulated disk does not fail in a poll");
            let mut outputs = Vec::new();
            replica.drain_outputs(&mut outputs);
            if outputs.is_empty() {
                break;
            }
            for output in outputs {
                self.handle_output(id, output);
            }
            self.start_leading_when_caught_up(id);
        }
        self.schedule_engine_tick(id);
        self.maybe_start_sync(id);
    }

    fn propose_appends(&mut self, id: u64) {
        let release_on_append = self.config.bugs.release_on_append;
        let node = self.node(id);
        let Some(leading) = node.leading.as_mut() else { return };
        if leading.fx.appends.is_empty() && leading.fx.outputs.is_empty() && node.backlog.is_empty() {
            return;
        }
        let replica = node.replica.as_mut().expect("a leader is up");
        let mut payload = Vec::new();
        let mut last_appended = None;
        for (lsn, record) in leading.fx.appends.drain(..) {
            node.encoder.push(lsn, &record, &mut payload).expect("records fit in a batch");
            last_appended = Some(lsn);
        }
        let refused = node.backlog.propose(replica, node.encoder.take()).is_err();
        let (is_leader, last_index) = (replica.is_leader(), replica.last_index());
        let backlogged = !node.backlog.is_empty();
        if refused {
            // The engine's numbering now has a gap the log does not: rebuild from the log.
            node.encoder.take();
            self.stop_leading(id);
            if is_leader {
                self.node(id).build_at = Some(last_index);
            }
            return;
        }
        let mut released = Vec::new();
        for output in leading.fx.outputs.drain(..) {
            leading.gate.push(output, &mut released);
        }
        if release_on_append && let Some(lsn) = last_appended {
            // Planted bug: the local append is taken for the majority's commit.
            leading.gate.advance(lsn, &mut released);
        }
        let (engine, epoch) = (leading.id, leading.engine.epoch());
        self.route_engine_outputs(engine, epoch, released);
        if backlogged {
            self.counts.busy_turns += 1;
        }
    }

    fn handle_output(&mut self, id: u64, output: Output) {
        match output {
            Output::Send { to, bytes } => {
                self.send(Endpoint::Replica(id), Endpoint::Replica(to), || Event::Raft {
                    to,
                    from: id,
                    bytes: bytes.clone(),
                });
            }
            Output::Apply(entry) => {
                self.check_same_batch(id, entry.index, &entry.data);
                // With the planted bug the gate already passed what the leader appended.
                let already_released = self.config.bugs.release_on_append;
                let node = self.node(id);
                let last = node.state.as_mut().expect("up").apply(&entry.data).expect("a committed batch decodes");
                let mut released = Vec::new();
                match node.leading.as_mut() {
                    Some(leading)
                        if entry.term == leading.id.term && already_released && last <= leading.gate.durable() => {}
                    Some(leading) if entry.term == leading.id.term => leading.gate.advance(last, &mut released),
                    Some(leading) if entry.term > leading.id.term => self.stop_leading(id),
                    _ => {}
                }
                if let Some(leading) = &self.node(id).leading {
                    let (engine, epoch) = (leading.id, leading.engine.epoch());
                    self.route_engine_outputs(engine, epoch, released);
                }
            }
            Output::Restore(snapshot) => {
                let node = self.node(id);
                assert!(node.leading.is_none(), "a leader never restores a snapshot over its own state");
                node.state.as_mut().expect("up").restore(&snapshot.data).expect("a snapshot decodes");
            }
            Output::SnapshotDue { index } => {
                let node = self.node(id);
                let data = node.state.as_mut().expect("up").snapshot();
                node.replica.as_mut().expect("up").compact(index, data).expect("compacting an applied index");
            }
            Output::Role(change) => {
                let node = self.node(id);
                let leads_this_term = node.leading.as_ref().is_some_and(|l| l.id.term == change.term);
                if !change.is_leader || !leads_this_term {
                    self.stop_leading(id);
                }
                let build_before_caught_up = self.config.bugs.build_before_caught_up;
                let node = self.node(id);
                node.build_at = if change.is_leader && node.leading.is_none() {
                    let replica = node.replica.as_ref().expect("up");
                    // Raft's own entry of the new term is the last one: applied, everything
                    // committed before the term is too.
                    Some(if build_before_caught_up { replica.applied().0 } else { replica.last_index() })
                } else {
                    None
                };
            }
        }
    }

    fn check_same_batch(&mut self, id: u64, index: u64, data: &bytes::Bytes) {
        match self.committed.get(&index) {
            Some(known) if known != data => self
                .violations
                .push(format!("replica {id} applied another batch at index {index} than another replica")),
            Some(_) => {}
            None => {
                self.committed.insert(index, data.clone());
            }
        }
    }

    fn start_leading_when_caught_up(&mut self, id: u64) {
        let epoch_not_from_term = self.config.bugs.epoch_not_from_term;
        let now = self.now;
        let node = self.node(id);
        let Some(index) = node.build_at else { return };
        let replica = node.replica.as_ref().expect("up");
        if !replica.is_leader() || replica.applied().0 < index {
            return;
        }
        node.build_at = None;
        let term = replica.term();
        let floor = if epoch_not_from_term { Epoch(0) } else { Epoch(u32::try_from(term).expect("small terms")) };
        let mut fx = CoordEffects::default();
        let state = node.state.as_ref().expect("up");
        let engine = state.leader_engine(floor, now, &mut fx);
        let gate = DurabilityGate::new(state.last_lsn());
        let epoch = engine.epoch();
        let engine_id = EngineId { replica: id, term, incarnation: node.incarnation };
        node.leading = Some(Leading { id: engine_id, engine, gate, fx, tick_at: None });
        self.counts.engines += 1;
        let others = self.engines_by_epoch.entry(epoch).or_default();
        if others.iter().any(|e| e.replica != id || e.term != term) {
            self.violations.push(format!("two engines decide with epoch {}: {others:?} and {engine_id:?}", epoch.0));
        }
        others.push(engine_id);
        // Its network dials the participants.
        for participant in 0..self.config.sim.participants {
            let at = self.after_us(DELAY_US);
            self.schedule(at, Event::Connected { participant, engine: engine_id, epoch });
        }
    }

    /// Drops the engine and what it held; its connections close.
    pub(super) fn stop_leading(&mut self, id: u64) {
        let node = self.node(id);
        node.backlog.clear();
        let Some(leading) = node.leading.take() else { return };
        for participant in 0..self.config.sim.participants {
            let at = self.after_us(DELAY_US);
            self.schedule(at, Event::ConnectionLost { participant, engine: leading.id });
        }
    }

    /// Arms the engine's timer for its next deadline (if sooner than the one armed).
    fn schedule_engine_tick(&mut self, id: u64) {
        let now = self.now;
        let node = self.node(id);
        if node.backlogged() {
            return; // Its timer waits: `engine_tick` retries a tick later.
        }
        let Some(leading) = node.leading.as_mut() else { return };
        let deadline = leading.engine.next_deadline();
        let engine = leading.id;
        if let Some(deadline) = deadline
            && leading.tick_at.is_none_or(|at| at > deadline)
        {
            let at = deadline.max(now);
            leading.tick_at = Some(at);
            self.schedule(at, Event::EngineTick { engine });
        }
    }
}
